"""The configuration of a run, resolved before any Trainer exists: which checkpoint it resumes from
(``--resume-from``, ``--continue-from``) and the settings taken from that checkpoint's config.

A resume's base is the checkpoint's own config, then the YAML, then the flags given, so
``--resume-from auto`` alone continues a run as it was configured; architecture settings that
differ from the checkpoint's are refused, and a YAML file that silently changes how the resumed run
trains is called out. Restoring the Trainer itself is ``engine.training.resume``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from engine.checkpoint.continuation import previous_run_checkpoint
from engine.checkpoint.files import find_resumable, load_checkpoint
from engine.checkpoint.format import SIGNATURE_KEYS, CheckpointError, progress, signature_conflicts, stored_config
from engine.config.checks import check_continuation
from engine.config import (FIELD_NAMES, PER_INVOCATION_KEYS, SCHEDULE_KEYS, ConfigError, TrainConfig, build_config,
                           coerce_value)
from engine.training.stages import check_epochs_left

logger = logging.getLogger(__name__)

# A Kaggle session saves /kaggle/working as its output; a later session sees that output, read-only,
# as /kaggle/input/<its name>/... (module constants: tests point them at temporary folders).
KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_INPUT = Path("/kaggle/input")
RUN_FILES = ("last.pth", "best_model.pth")  # with metrics.jsonl: a folder a run wrote


def how_to_continue(checkpoint_dir: str, time_limit: Optional[str] = None) -> str:
    """The commands that continue the run of ``checkpoint_dir``: in this session, and in a new one
    (Kaggle: this session's output comes back under /kaggle/input, read-only)."""
    folder = Path(checkpoint_dir)
    limit = f" --time-limit {time_limit}" if time_limit else ""
    command = "python train_ultimate.py train"
    try:
        inside = folder.resolve().relative_to(KAGGLE_WORKING.resolve())
    except ValueError:  # not a Kaggle output folder
        later = f"a new session, from a copy of {folder}: `{command} --continue-from <the-copy> --checkpoint-dir " \
                f"<a-new-folder>{limit}`"
    else:
        later = (f"a new Kaggle session, with this version's output added as an input: `{command} --continue-from "
                 f"{KAGGLE_INPUT}/<input-folder>/{inside.as_posix()} --checkpoint-dir {folder}{limit}`")
    same = f"`{command} --resume-from auto --checkpoint-dir {folder}{limit}`"
    return f"continue in this session with {same}, or in {later}"


def kaggle_input_runs() -> List[Path]:
    """Folders one or two levels under ``KAGGLE_INPUT`` holding a run: ``last.pth`` or ``best_model.pth``
    next to ``metrics.jsonl`` (a previous session's output)."""
    def holds_run(folder: Path) -> bool:
        return (folder / "metrics.jsonl").is_file() and any((folder / name).is_file() for name in RUN_FILES)

    def subfolders(folder: Path) -> List[Path]:
        try:
            return sorted(child for child in folder.iterdir() if child.is_dir())
        except OSError:  # unreadable: not a run we could continue anyway
            return []

    return [folder for child in subfolders(KAGGLE_INPUT) for folder in (child, *subfolders(child))
            if holds_run(folder)]


def _warn_new_run(checkpoint_dir: str) -> None:
    """``--resume-from auto`` found nothing: what a forgotten ``--continue-from`` in a new Kaggle
    session looks like, so name the previous output when one is an input."""
    folder = Path(checkpoint_dir).resolve()
    runs = kaggle_input_runs()
    fix = f"stop and pass --continue-from <its folder> --checkpoint-dir {checkpoint_dir} in place of --resume-from auto"
    if len(runs) == 1:
        where = f"{runs[0]} holds a previous run: to continue it, {fix.replace('<its folder>', str(runs[0]))}"
    elif runs:
        listed = ", ".join(str(run) for run in runs[:3]) + (", ..." if len(runs) > 3 else "")
        where = f"{KAGGLE_INPUT} holds {len(runs)} previous runs ({listed}): to continue one, {fix}"
    else:
        where = f"to continue a previous session's run, whose output is now a read-only input, {fix}"
    logger.warning("--resume-from auto: no checkpoint in %s (looked for last.pth and epoch_N.pth), so this is a new "
                   "run from epoch 1; %s", folder, where)


def find_resume_path(resume_from: Optional[str], checkpoint_dir: str, continue_from: Optional[str] = None,
                     warn: bool = True) -> Optional[Path]:
    """The checkpoint a run resumes from: the one ``--resume-from`` names (``auto``: the furthest
    usable one in ``checkpoint_dir``), or with ``--continue-from`` the previous output's, unless
    ``checkpoint_dir`` already holds the continued run (the command was run again in one session).
    ``warn``: say so when ``auto`` finds nothing (off where ``resolve_run_config`` already did).

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
        if found is None and warn:
            _warn_new_run(checkpoint_dir)
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
    payload = load_checkpoint(path, mmap=True)
    stored = stored_config(payload)
    requested = {key: coerce_value(key, given[key]) for key in SIGNATURE_KEYS if key in given}
    conflicts = signature_conflicts(stored, requested)
    if conflicts:
        listed = ", ".join(f"--{key.replace('_', '-')} {requested[key]} (checkpoint: {stored[key]})"
                           for key in conflicts)
        raise ConfigError(f"{path} was trained with another architecture: {listed}; drop these settings to "
                          "continue that run, or train anew in another --checkpoint-dir")
    config = build_config(yaml_values, flag_values, stored)
    check_epochs_left(int(progress(payload).get("epoch", 0)), config, str(path))
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
