"""Resuming a Trainer from a checkpoint: exact continuation, or a re-planned schedule.

Same schedule flags: ``Trainer.load_state_dict`` restores every counter, the plan, optimizer
moments, scaler and callbacks, and the RNG states are put back, so the run ends bitwise as if
never stopped (CPU). Changed schedule flags (the plateau-breaking recipe): weights and optimizer
moments are kept, and the current stage's LR segment restarts at the resume epoch with the new
settings; the changes are logged.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from engine.checkpoint.continuation import previous_run_checkpoint
from engine.checkpoint.files import find_resumable, load_checkpoint, restore_rng_state
from engine.checkpoint.format import (SIGNATURE_KEYS, CheckpointError, check_model_format, check_signature, progress,
                                      signature_conflicts, stored_config, trainer_state)
from engine.config.checks import check_continuation
from engine.config import (FIELD_NAMES, PER_INVOCATION_KEYS, SCHEDULE_KEYS, ConfigError, TrainConfig, build_config,
                           coerce_value)
from engine.training.stages import PlanState

logger = logging.getLogger(__name__)


def find_resume_path(resume_from: Optional[str], checkpoint_dir: str,
                     continue_from: Optional[str] = None) -> Optional[Path]:
    """The checkpoint a run resumes from: the one ``--resume-from`` names (``auto``: the furthest
    usable one in ``checkpoint_dir``), or with ``--continue-from`` the previous output's, unless
    ``checkpoint_dir`` already holds the continued run (the command was run again in one session).

    Raises:
        CheckpointError: the named file or previous output is missing or holds no run.
    """
    if continue_from:
        working = find_resumable(Path(checkpoint_dir))
        if working is None:
            return previous_run_checkpoint(Path(continue_from))
        logger.info("--continue-from: %s already holds the continued run; resuming it", checkpoint_dir)
        return working
    if not resume_from:
        return None
    if resume_from == "auto":
        found = find_resumable(Path(checkpoint_dir))
        if found is None:  # what a forgotten --continue-from in a new Kaggle session looks like
            logger.warning("--resume-from auto: no checkpoint in %s (looked for last.pth and epoch_N.pth), so this is "
                           "a new run from epoch 1; to continue a previous session's run, whose output is now a "
                           "read-only input, stop and pass --continue-from <its folder> instead",
                           Path(checkpoint_dir).resolve())
        return found
    path = Path(resume_from)
    if path.is_dir():
        raise CheckpointError(f"--resume-from {path} is a folder; pass a .pth file in it (e.g. {path / 'last.pth'}) "
                              f"or --resume-from auto --checkpoint-dir {path}")
    if not path.is_file():
        raise CheckpointError(f"--resume-from {path} does not exist; pass a .pth file or 'auto'")
    return path


def resolve_run_config(yaml_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> Tuple[TrainConfig, List[str]]:
    """The config of a run: when resuming, the checkpoint's own config is the base, then the YAML,
    then the flags given; so ``--resume-from auto`` alone continues a run as it was configured.

    Returns:
        The validated config and lines saying what came from the checkpoint and what changed.

    Raises:
        ConfigError: the YAML or flags set architecture settings that differ from the checkpoint's
            (all of them named in one line).
    """
    given = dict(yaml_values)
    given.update({key: value for key, value in flag_values.items() if value is not None})
    checkpoint_dir = given.get("checkpoint_dir", TrainConfig.checkpoint_dir)
    check_continuation(given.get("continue_from"), given.get("resume_from"), checkpoint_dir)
    path = find_resume_path(given.get("resume_from"), checkpoint_dir, given.get("continue_from"))
    if path is None:
        return build_config(yaml_values, flag_values), []
    stored = stored_config(load_checkpoint(path, mmap=True))
    requested = {key: coerce_value(key, given[key]) for key in SIGNATURE_KEYS if key in given}
    conflicts = signature_conflicts(stored, requested)
    if conflicts:
        listed = ", ".join(f"--{key.replace('_', '-')} {requested[key]} (checkpoint: {stored[key]})"
                           for key in conflicts)
        raise ConfigError(f"{path} was trained with another architecture: {listed}; drop these settings to "
                          "continue that run, or train anew in another --checkpoint-dir")
    config = build_config(yaml_values, flag_values, stored)
    inherited = [key for key in FIELD_NAMES if key in stored and key not in PER_INVOCATION_KEYS and key not in given]
    changed = [f"{key.replace('_', '-')}: {stored[key]} -> {getattr(config, key)}" for key in FIELD_NAMES
               if key in stored and key not in PER_INVOCATION_KEYS and stored[key] != getattr(config, key)]
    notes = [f"continuing the run of {path}: {len(inherited)} settings taken from its config",
             "changed on this invocation: " + ("; ".join(changed) if changed else "nothing")]
    warn_yaml_changes(stored, config, yaml_values, flag_values, path)
    return config, notes


# What a --config file silently resets on a resume: the schedule, the batch and accumulation, EMA.
RUN_SHAPING_KEYS = (*SCHEDULE_KEYS, "use_ema")


def warn_yaml_changes(stored: Mapping[str, Any], config: TrainConfig, yaml_values: Mapping[str, Any],
                      flag_values: Mapping[str, Any], path: Path) -> None:
    """WARN when the YAML file, not a flag typed on this command line, changes how the resumed run
    trains: a documented config reused to continue a run would reset its epochs, LRs, batch or EMA."""
    from_yaml = [key for key in RUN_SHAPING_KEYS
                 if key in yaml_values and flag_values.get(key) is None and key in stored
                 and stored[key] != getattr(config, key)]
    if not from_yaml:
        return
    changes = "; ".join(f"{key.replace('_', '-')}: {stored[key]} -> {getattr(config, key)}" for key in from_yaml)
    keep = " ".join(_flag_for(key, stored[key]) for key in from_yaml)
    logger.warning("--config changes the run of %s on this resume: %s. A resume takes every setting from the "
                   "checkpoint; to keep the run's own values drop --config or pass %s", path, changes, keep)


def _flag_for(key: str, value: Any) -> str:
    flag = f"--{key.replace('_', '-')}"
    if isinstance(value, bool):
        return flag if value else f"--no-{key.replace('_', '-')}"
    return f"{flag} {value}"


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
