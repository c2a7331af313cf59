"""Restoring a Trainer from a checkpoint: exact continuation, or a re-planned schedule.

Same schedule flags: ``Trainer.load_state_dict`` restores every counter, the plan, optimizer
moments, scaler and callbacks, and the RNG states are put back, so the run ends bitwise as if
never stopped (CPU). Changed schedule flags (the plateau-breaking recipe): weights and optimizer
moments are kept, and the current stage's LR segment restarts at the resume epoch with the new
settings; the changes are logged. Which checkpoint, and the config taken from it, are resolved
before the Trainer exists (``engine.training.run_config``).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from engine.checkpoint.files import restore_rng_state
from engine.checkpoint.format import (CheckpointError, check_model_format, check_signature, progress, stored_config,
                                      trainer_state)
from engine.config import SCHEDULE_KEYS, ConfigError, TrainConfig
from engine.training.stages import PlanState

logger = logging.getLogger(__name__)


def schedule_changes(old: Dict[str, Any], new: TrainConfig) -> List[str]:
    """``['lr: 0.00025 -> 0.0001', ...]`` for every schedule-shaping setting that differs."""
    changes = []
    for key in SCHEDULE_KEYS:
        if key in old and old[key] != getattr(new, key):
            changes.append(f"{key.replace('_', '-')}: {old[key]} -> {getattr(new, key)}")
    return changes


def restore_trainer(trainer, payload: Dict[str, Any], source: str) -> None:
    """Load ``payload`` (current layout, see ``load_checkpoint``) into ``trainer``."""
    config = trainer.config
    check_model_format(payload, source)
    check_signature(payload, config, source)
    try:
        trainer.load_state_dict(trainer_state(payload))
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {source} does not fit this model ({str(error).splitlines()[0]}); "
                              "check --backbone and --num-experts") from None
    check_training_set(trainer, payload, source)
    world_size = trainer.distributed.world_size
    if int(payload.get("world_size", 1)) != world_size:
        logger.warning("Checkpoint %s was written by %d process(es), this run has %d: the data order and "
                       "steps per epoch change, so the run cannot continue bitwise; re-planning the schedule",
                       source, int(payload.get("world_size", 1)), world_size)
    old_scales = dict(trainer.plan.state.lr_scales)
    trainer.plan.state, _, changes = planned_state(payload, config, world_size)
    if not changes:
        if "rng" in payload:
            restore_rng_state(payload["rng"])
        where = (f"epoch {trainer.epoch + 1}, batch {trainer.batch_in_epoch}" if trainer.batch_in_epoch
                 else f"epoch {trainer.epoch + 1}")
        logger.info("Resumed from %s (step %d); continuing at %s with the same schedule", source,
                    trainer.global_step, where)
        return
    trainer.restart_epoch()  # a partial epoch under the old plan restarts under the new one
    logger.info("Resumed from %s at epoch %d with changed schedule settings: %s", source, trainer.epoch,
                "; ".join(changes))
    if any(scale != 1.0 for scale in old_scales.values()):
        logger.info("The plateau LR scale of the old plan (%s) is dropped: the new schedule starts from its own LR",
                    ", ".join(f"stage {stage} x{scale:.3g}" for stage, scale in sorted(old_scales.items())))
    logger.info("Re-planned the rest of the run from epoch %d:", trainer.epoch + 1)
    for line in trainer.plan.describe():
        logger.info("  %s", line)


def check_training_set(trainer, payload: Dict[str, Any], source: str) -> None:
    """Compare the training set with the one the checkpoint saw (older checkpoints: not recorded).

    At an epoch boundary a changed set is only reported: the next epoch simply draws from the new
    one. A mid-epoch position indexes the old set's order, so it is refused unless
    ``--restart-epoch`` redoes that epoch from its first batch.

    Raises:
        ConfigError: the set changed, the checkpoint is mid-epoch and ``--restart-epoch`` is off.
    """
    saved, current = payload.get("data"), trainer.data.fingerprint()
    if not isinstance(saved, dict) or saved == current:
        if trainer.config.restart_epoch and trainer.batch_in_epoch:
            logger.info("--restart-epoch: epoch %d restarts from its first batch", trainer.epoch + 1)
            trainer.restart_epoch()
        return
    change = (f"{saved.get('train_samples')} -> {current['train_samples']} training images"
              if saved.get("train_samples") != current["train_samples"] else "same size, other files")
    if trainer.batch_in_epoch == 0:
        logger.warning("The training set changed since %s was saved (%s); continuing at the epoch boundary "
                       "with the new set", source, change)
        return
    if not trainer.config.restart_epoch:
        raise ConfigError(f"the training set changed since {source} was saved mid-epoch ({change}), so its position "
                          f"(batch {trainer.batch_in_epoch} of epoch {trainer.epoch + 1}) cannot be continued; pass "
                          "--restart-epoch to redo that epoch from its first batch with the new set, or restore the "
                          "old dataset")
    logger.warning("The training set changed since %s was saved (%s); --restart-epoch: epoch %d restarts from its "
                   "first batch with the new set", source, change, trainer.epoch + 1)
    trainer.restart_epoch()


def planned_state(payload: Optional[Dict[str, Any]], config: TrainConfig, world_size: int = 1):
    """(plan state, completed epochs, changes) of a resume from ``payload`` (``None``: a fresh run).

    ``changes`` lists the schedule-shaping differences (settings, number of processes); empty means
    the checkpoint's plan continues unchanged, otherwise the rest of the run is re-planned.
    """
    if payload is None:
        return PlanState.fresh(config), 0, []
    epoch = int(progress(payload).get("epoch", 0))
    saved_plan = trainer_state(payload).get("plan")
    saved = PlanState.from_state_dict(saved_plan) if saved_plan else PlanState.fresh(config)
    changes = schedule_changes(stored_config(payload), config)
    if config.restart_schedule:
        changes.append("--restart-schedule: the current stage's LR schedule restarts here")
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
