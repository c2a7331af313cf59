"""``train --dry-run``: the resolved configuration and the stage/LR plan, without training."""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import torch
import yaml

from engine.build import check_new_run_folder, resolve_resume_path
from engine.checkpoint import load_checkpoint
from engine.checkpoint.lock import check_unlocked
from data.layouts import DATASET_FLAG
from engine.commands.dry_run_checks import setup_lines, summary_lines
from engine.commands.memory_estimate import GIB, T4_CAPACITY, describe_budget, estimate_training_memory
from engine.config import TrainConfig
from engine.monitors.averaging_windows import averaging_facts
from engine.runtime.cuda_device import amp_dtype, select_device
from engine.runtime.launch import describe_launch, processes_for, under_launcher
from engine.training.data_module import count_training_samples, resolve_num_workers
from engine.training.resume import planned_state
from engine.training.stages import StagePlan, check_epochs_left


def describe_dry_run(config: TrainConfig, notes: Sequence[str] = (),
                     origin: str = DATASET_FLAG) -> Tuple[List[str], List[str]]:
    """The lines a dry run prints (the config as YAML, ``notes``, the checks, the plan, re-planned when
    resuming, the summary) and its warnings. Checks what a real run checks first (device, run folder,
    lock) and what it would fail on later (``dry_run_checks``: weights, datasets, output folder,
    packages), and writes nothing. ``origin``: how a dataset error names the path (``dataset_origin``)."""
    device = select_device(config.device, config.amp, config.compile)
    lines = [yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(), *notes]
    resume_path = resolve_resume_path(config)
    check_new_run_folder(config, resume_path)
    check_unlocked(config.checkpoint_dir)
    payload = load_checkpoint(resume_path) if resume_path else None
    checks, sources = setup_lines(config, resume_path, origin)
    lines += checks
    world_size = int(os.environ["WORLD_SIZE"]) if under_launcher() else processes_for(config.devices, config.device)
    state, epoch, changes = planned_state(payload, config, world_size)
    check_epochs_left(epoch, config, str(resume_path))  # a fresh run has every epoch left
    plan_notes = []
    if payload is not None:
        plan_notes = ([f"changed: {change}" for change in changes] + [f"re-planned from epoch {epoch + 1}"] if changes
                      else ["same schedule settings as the checkpoint: continuing its plan"])
    plan = StagePlan(config, -(-count_training_samples(config, origin) // world_size), state)
    lines.append(f"plan (starting at epoch {epoch + 1}" + (f", resuming {resume_path}" if resume_path else "") + "):")
    facts, warnings = averaging_facts(config, plan, epoch)
    workers = resolve_num_workers(config.num_workers, world_size, warn=False)
    facts.append(f"data loading: {workers} DataLoader workers" + (" per rank" if world_size > 1 else "")
                 + (" (from the CPU cores)" if config.num_workers is None else ""))
    if world_size > 1:
        facts.append(describe_launch(world_size, device.type == "cuda", config.batch_size,
                                     config.stage2_batch_size or config.batch_size, config.accumulation_steps))
    lines += [f"  {line}" for line in plan_notes + plan.describe() + facts]
    lines += memory_lines(config, device)
    lines += summary_lines(config, plan, epoch, sources, resume_path)
    return lines, warnings


def print_dry_run(config: TrainConfig, notes: Sequence[str] = (), origin: str = DATASET_FLAG) -> int:
    """Print :func:`describe_dry_run`'s lines and warnings, then the verdict; the exit code (0)."""
    lines, warnings = describe_dry_run(config, notes, origin)
    print("\n".join(lines + [f"warning: {line}" for line in warnings]))
    print("dry run: configuration is valid; nothing was trained")
    return 0


def memory_lines(config: TrainConfig, device: torch.device) -> List[str]:
    """The per-stage, per-GPU memory estimate (``engine.commands.memory_estimate``) against this GPU's
    capacity and AMP dtype, or, on a machine without one, against a T4's (where ``--amp auto`` means
    fp16 and ``--devices auto`` both of Kaggle's two T4s). Each allowance is labelled."""
    if device.type == "cuda":
        dtype = amp_dtype(config.amp, device)
        capacity = torch.cuda.get_device_properties(device).total_memory
        card = f"{torch.cuda.get_device_name(device)}, {capacity / GIB:.2f} GiB"
        world_size = int(os.environ["WORLD_SIZE"]) if under_launcher() else processes_for(config.devices, config.device)
    else:
        dtype = {"off": None, "bf16": torch.bfloat16}.get(config.amp, torch.float16)
        capacity = T4_CAPACITY
        card = "a 16 GB T4, the Kaggle GPU (no GPU here; Kaggle's GPU is two T4s)"
        world_size = 2 if config.devices == "auto" else int(config.devices)
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    header = (f"GPU memory estimate for {card}, AMP {precision}"
              + (", gradient checkpointing" if config.grad_checkpointing else "")
              + (f", {world_size} ranks (DDP)" if world_size > 1 else ", 1 GPU")
              + " (fake-CUDA count of what autograd saves + weights, gradients, AdamW, EMA, slack and the "
              "allowances named; not measured):")
    stages = estimate_training_memory(config, dtype, world_size)
    return [header, f"  {describe_budget(capacity)}"] + [f"  {stage.describe(capacity)}" for stage in stages]
