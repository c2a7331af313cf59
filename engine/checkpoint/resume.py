"""Resuming a Trainer from a checkpoint: exact continuation, or a re-planned schedule.

Same schedule flags: every counter, the plan, optimizer moments, scaler, callbacks and RNG states
are restored, so the run ends bitwise as if never stopped (CPU). Changed schedule flags (the
plateau-breaking recipe): weights and optimizer moments are kept, and the current stage's LR
segment restarts at the resume epoch with the new settings; the changes are logged.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch

from engine.checkpoint.files import CheckpointError, check_model_format, restore_rng_state
from engine.config import SCHEDULE_KEYS, TrainConfig
from engine.stages import PlanState

logger = logging.getLogger(__name__)

SIGNATURE_KEYS = ("backbone", "num_experts", "top_k", "decoder_channels", "min_feature_stride",
                  "detail_channels")


def check_signature(payload: Dict[str, Any], config: TrainConfig, source: str) -> None:
    """Refuse a checkpoint made for another architecture, naming the mismatching setting."""
    signature = payload.get("model_signature") or {}
    for key in SIGNATURE_KEYS:
        if key in signature and signature[key] != getattr(config, key):
            flag = key.replace("_", "-")
            raise CheckpointError(
                f"checkpoint {source} was made with --{flag} {signature[key]} but this run uses "
                f"--{flag} {getattr(config, key)}; pass --{flag} {signature[key]} or another checkpoint")


def schedule_changes(old: Dict[str, Any], new: TrainConfig) -> List[str]:
    """``['lr: 0.00025 -> 0.0001', ...]`` for every schedule-shaping setting that differs."""
    changes = []
    for key in SCHEDULE_KEYS:
        if key in old and old[key] != getattr(new, key):
            changes.append(f"{key.replace('_', '-')}: {old[key]} -> {getattr(new, key)}")
    return changes


def restore_trainer(trainer, payload: Dict[str, Any], source: str) -> None:
    """Load ``payload`` into ``trainer`` (model, EMA, optimizer, plan, counters, callbacks, RNG)."""
    config = trainer.config
    check_model_format(payload, source)
    check_signature(payload, config, source)
    try:
        trainer.unwrapped_model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {source} does not fit this model ({str(error).splitlines()[0]}); "
                              "check --backbone and --num-experts") from None
    epoch = int(payload.get("epoch", 0))
    trainer.epoch, trainer.global_step = epoch, int(payload.get("global_step", 0))
    _load_optimizer(trainer, payload, source)
    trainer.precision.load_state_dict(payload.get("scaler") or {})
    trainer.callbacks.load_state_dict(payload.get("callbacks") or {})
    trainer.guard.load_state_dict(payload.get("nonfinite_guard") or {})
    trainer.criterion.load_state_dict(payload.get("criterion") or {}, strict=False)  # loss-normaliser EMAs
    ema_callback = trainer.callbacks.get("weight_ema")
    if ema_callback is not None:
        ema_callback.load_weights(payload.get("ema"))
    world_size = trainer.distributed.world_size
    if int(payload.get("world_size", 1)) != world_size:
        logger.warning("Checkpoint %s was written by %d process(es), this run has %d: the data order and "
                       "steps per epoch change, so the run cannot continue bitwise; re-planning the schedule",
                       source, int(payload.get("world_size", 1)), world_size)
    trainer.plan.state, _, changes = planned_state(payload, config, world_size)
    if not changes:
        trainer.batch_in_epoch = int(payload.get("batch_in_epoch", 0))
        trainer.epoch_loss_sum = payload.get("epoch_loss_sum", torch.zeros(())).to(trainer.device)
        trainer.epoch_updates = int(payload.get("epoch_updates", 0))
        if "rng" in payload:
            restore_rng_state(payload["rng"])
        where = f"epoch {epoch + 1}, batch {trainer.batch_in_epoch}" if trainer.batch_in_epoch else f"epoch {epoch + 1}"
        logger.info("Resumed from %s (step %d); continuing at %s with the same schedule", source,
                    trainer.global_step, where)
        return
    trainer.batch_in_epoch = 0  # a partial epoch under the old plan restarts under the new one
    logger.info("Resumed from %s at epoch %d with changed schedule settings: %s", source, epoch, "; ".join(changes))
    logger.info("Re-planned the rest of the run from epoch %d:", epoch + 1)
    for line in trainer.plan.describe():
        logger.info("  %s", line)


def planned_state(payload: Optional[Dict[str, Any]], config: TrainConfig, world_size: int = 1):
    """(plan state, completed epochs, changes) of a resume from ``payload`` (``None``: a fresh run).

    ``changes`` lists the schedule-shaping differences (settings, number of processes); empty means
    the checkpoint's plan continues unchanged, otherwise the rest of the run is re-planned.
    """
    if payload is None:
        return PlanState.fresh(config), 0, []
    epoch = int(payload.get("epoch", 0))
    saved = PlanState.from_state_dict(payload["plan"]) if "plan" in payload else PlanState.fresh(config)
    changes = schedule_changes(payload.get("config") or {}, config)
    saved_world = int(payload.get("world_size", 1))
    if saved_world != world_size:
        changes.append(f"world size: {saved_world} -> {world_size}")
    return (replan(saved, epoch, config) if changes else saved), epoch, changes


def replan(old: PlanState, epoch: int, config: TrainConfig) -> PlanState:
    """Plan state for a resume at ``epoch`` (completed epochs) with new schedule settings."""
    if epoch >= old.stage2_start:  # already in stage 2: keep its start (progressive unfreezing clock)
        stage2_start = old.stage2_start
    elif config.skip_stage1:
        stage2_start = epoch
    else:
        stage2_start = max(config.stage1_epochs, epoch)
    current_stage = 1 if epoch < stage2_start else 2
    origins = {1: 0, 2: stage2_start}
    origins[current_stage] = epoch
    return PlanState(stage2_start, origins)


def _load_optimizer(trainer, payload: Dict[str, Any], source: str) -> None:
    state = payload.get("optimizer")
    if not state:
        logger.info("Checkpoint %s has no optimizer state: AdamW moments start fresh", source)
        return
    try:
        trainer.optimizer.load_state_dict(state)
    except (ValueError, KeyError) as error:
        logger.warning("Optimizer state of %s does not match (%s); AdamW moments start fresh", source, error)
        return
    for group in trainer.optimizer.param_groups:  # the new run's weight decay wins
        if group["weight_decay"] > 0:
            group["weight_decay"] = trainer.config.weight_decay
