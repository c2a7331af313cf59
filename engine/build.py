"""Factories: ``TrainConfig`` -> device, model, data, callbacks and a ready (maybe resumed) Trainer."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from engine.callbacks.early_stopping import EarlyStoppingCallback
from engine.callbacks.plateau_lr import PlateauLRCallback
from engine.callbacks.preview import PreviewCallback
from engine.callbacks.run_log import LoggingCallback
from engine.callbacks.save_checkpoints import CheckpointCallback
from engine.callbacks.signals import SignalStopCallback
from engine.callbacks.stopping import StopAfterEpochsCallback, TimeLimitCallback
from engine.callbacks.weight_ema import WeightEMACallback
from engine.checkpoint import load_checkpoint
from engine.checkpoint.continuation import copy_run_history
from engine.checkpoint.format import progress
from engine.checkpoint.lock import check_writable
from engine.config import ConfigError, TrainConfig
from engine.monitors import (ExpertUsageMonitor, GradientDriftMonitor, GradNormMonitor, LossEMAMonitor,
                             PostEpochEvaluator)
from engine.monitors.averaging_windows import averaging_facts
from engine.runtime.compile import compile_model
from engine.runtime.cuda_device import select_device
from engine.runtime.distributed import init_distributed
from engine.training.callback import Callback
from engine.training.data_module import DataSources, build_data, scan_data
from engine.training.losses import build_criterion
from engine.training.resume import restore_trainer
from engine.training.run_config import find_resume_path, how_to_continue
from engine.training.stages import check_epochs_left
from engine.training.trainer import Trainer
from models import build_model

logger = logging.getLogger(__name__)


def build_callbacks(config: TrainConfig, is_main: bool = True) -> List[Optional[Callback]]:
    """Optional features as callbacks; each declares its place in the call order (``Order``).

    Under DDP only rank 0 logs and saves; the other ranks keep the callbacks that change training.
    """
    folder = Path(config.checkpoint_dir)
    health_report = (PostEpochEvaluator(config.eval_epochs, warmup_epochs=config.warmup_epochs,
                                        total_epochs=config.epochs) if config.diagnosis_enabled else None)
    return [
        SignalStopCallback(how_to_continue(config.checkpoint_dir, config.time_limit)),
        WeightEMACallback(config.ema_decay, config.ema_warmup) if config.use_ema else None,
        TimeLimitCallback(config.time_limit_seconds) if config.time_limit else None,
        StopAfterEpochsCallback(config.stop_after_epochs) if config.stop_after_epochs else None,
        # on every rank: validation metrics are all-reduced, so all ranks stop at the same epoch
        EarlyStoppingCallback(config.early_stop_patience, config.best_metric) if config.early_stop_patience else None,
        LossEMAMonitor(config.loss_ema_beta, config.log_interval) if config.loss_ema else None,
        GradNormMonitor(config.grad_monitor_interval, config.grad_clip) if config.grad_monitor_interval > 0 else None,
        GradientDriftMonitor(config.grad_monitor_interval, config.drift_window, config.gain_threshold,
                             config.drift_threshold, config.drift_consecutive, config.grad_clip)
        if config.grad_monitor_interval > 0 else None,
        ExpertUsageMonitor(config.log_interval) if config.expert_monitor else None,
        health_report,
        # acts on the report's plateau finding: the report itself only observes
        PlateauLRCallback(config.min_lr, health_report.plateau_epochs)
        if config.auto_adjust_lr and health_report is not None else None,
        PreviewCallback(),  # val/preview image grid each epoch, through trainer.log_image
        LoggingCallback(folder, config.log_interval, step_lines=config.progress != "off") if is_main else None,
        CheckpointCallback(folder, config.keep_checkpoints, config.save_every_minutes, config.best_metric)
        if is_main else None,
    ]


def resolve_resume_path(config: TrainConfig) -> Optional[Path]:
    # resolve_run_config found it first and said what --resume-from auto on an empty folder means: once is enough
    return find_resume_path(config.resume_from, config.checkpoint_dir, config.continue_from, warn=False)


def check_new_run_folder(config: TrainConfig, resume_path: Optional[Path]) -> None:
    """Refuse to start a new run over the checkpoints of another one (one forgotten --resume-from
    would replace a 12-hour run's last.pth and best_model.pth)."""
    folder = Path(config.checkpoint_dir)
    if resume_path is not None or config.overwrite or not folder.is_dir():
        return
    existing = sorted(path.name for path in folder.glob("*.pth") if not path.name.startswith("."))
    if existing:
        raise ConfigError(f"--checkpoint-dir {folder} already holds a run ({', '.join(existing[:3])}"
                          f"{', ...' if len(existing) > 3 else ''}); continue it with --resume-from auto, choose "
                          "another --checkpoint-dir, or pass --overwrite to replace it")


def build_trainer(config: TrainConfig, sources: Optional[DataSources] = None) -> Trainer:
    """Everything a run needs, resumed from ``--resume-from`` when given.

    Args:
        sources: the dataset already scanned (``scan_data``); scanned here when None.
    """
    # Python's and numpy's generators too: a checkpoint stores all three, and unseeded ones would hold
    # each process's own OS entropy, so the same run resumed in another process would differ there.
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    distributed = init_distributed(config.device)
    if not distributed.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # user-facing output from rank 0 only
    device = select_device(config.device, config.amp, config.compile)
    if device.type == "cuda" and distributed.enabled:
        device = torch.device("cuda", distributed.local_rank)
    if config.deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    resume_path = resolve_resume_path(config)
    check_new_run_folder(config, resume_path)
    payload = load_checkpoint(resume_path) if resume_path else None
    if payload is not None:  # before anything is written: a run with no epoch left is refused
        check_epochs_left(int(progress(payload).get("epoch", 0)), config, str(resume_path))
    sources = sources or scan_data(config)  # before the model (and any weights download): bad paths fail fast
    synthetic = config.dataset_path is None
    model_config = config.model_config(synthetic, weights_from_checkpoint=payload is not None)
    model = build_model(model_config).to(device)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = build_data(config, model.encoder.normalization, distributed.rank, distributed.world_size, sources)
    if distributed.is_main:
        check_writable(Path(config.checkpoint_dir))
        if resume_path is not None and resume_path.parent.resolve() != Path(config.checkpoint_dir).resolve():
            if config.continue_from:  # a later session: the previous output's history comes along
                copied = copy_run_history(resume_path, Path(config.checkpoint_dir))
                logger.info("--continue-from: copied %s from %s into %s", ", ".join(copied), resume_path.parent,
                            config.checkpoint_dir)
    criterion = build_criterion(config).to(device)
    trainer = Trainer(config, model, criterion, data, build_callbacks(config, distributed.is_main), device,
                      distributed)
    if payload is not None:
        restore_trainer(trainer, payload, str(resume_path))
    if config.compile:
        compile_model(model)  # last: the EMA shadow made in the Trainer's setup is a plain eager copy
    return trainer


def describe_run(trainer: Trainer) -> List[str]:
    """Start-up summary: device, data, model size and the stage plan."""
    config = trainer.config
    parameters = sum(p.numel() for p in trainer.model.parameters())
    lines = [
        f"device {trainer.device}, precision {trainer.precision.dtype or 'fp32'}, "
        f"{torch.get_num_threads()} CPU threads, pid {os.getpid()}"
        + (f", DDP world size {trainer.distributed.world_size}" if trainer.distributed.enabled else ""),
        f"data: {trainer.data.description}",
        f"model: {config.backbone} + MoE decoder ({config.num_experts} experts, top-{config.top_k}), "
        f"{parameters / 1e6:.2f} M parameters",
    ]
    facts, _ = averaging_facts(config, trainer.plan, trainer.epoch)
    return lines + trainer.plan.describe() + facts


def run_warnings(trainer: Trainer) -> List[str]:
    """Start-up warnings about the run's setup (e.g. a weight-EMA window longer than the run)."""
    return averaging_facts(trainer.config, trainer.plan, trainer.epoch)[1]
