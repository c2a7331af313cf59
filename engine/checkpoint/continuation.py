"""``--continue-from``: continue a run from a read-only copy of its folder into a new, writable one.

A Kaggle session starts with an empty ``/kaggle/working``; the previous session's output comes back
only as a read-only input (``/kaggle/input/<notebook>/...``). Resuming from that copy alone would
leave the new folder with this session's history only. So the history of the run is copied first:
``config.yaml``, ``metrics.jsonl``, the TensorBoard events (``runs/``), ``report/``,
``best_model.pth`` and the checkpoint the run continues from. Each session's output is then the
whole run so far, and the next session continues from it.

Left behind on purpose: the ``epoch_N.pth`` snapshots (a few hundred MB each for ``edgenext_base``
with optimizer and EMA; Kaggle caps the output near 20 GB) and the resize cache (read in place
through ``data.cache``, never copied). The resumed run trims ``metrics.jsonl`` and purges the
TensorBoard steps after the checkpoint, as any resume does, so every epoch and step is kept once.

Nothing here writes into the source folder.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import List

from engine.checkpoint.files import TEMP_PREFIX, find_resumable
from engine.checkpoint.format import CheckpointError

logger = logging.getLogger(__name__)

HISTORY_FILES = ("config.yaml", "metrics.jsonl", "best_model.pth")
HISTORY_FOLDERS = ("runs", "report")
KAGGLE_HINT = ("on Kaggle, add the previous version's output as an input (Add Input -> Your Work) and name its "
               "folder under /kaggle/input")


def previous_run_checkpoint(folder: Path) -> Path:
    """The checkpoint a later session continues from: the furthest usable one in ``folder``, or in
    its one subfolder that holds a run (so a notebook's whole output folder works too).

    Raises:
        CheckpointError: ``folder`` is missing, or neither it nor one subfolder holds a run.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"--continue-from {folder} does not exist, so there is no run to continue; {KAGGLE_HINT}")
    found = find_resumable(folder)
    if found is not None:
        return found
    runs = [path for path in (find_resumable(child) for child in sorted(folder.iterdir()) if child.is_dir())
            if path is not None]
    if len(runs) == 1:
        logger.info("--continue-from %s: continuing the run in %s", folder, runs[0].parent)
        return runs[0]
    if runs:
        listed = ", ".join(str(path.parent) for path in runs)
        raise CheckpointError(f"--continue-from {folder} holds {len(runs)} runs ({listed}); name the folder of the one "
                              "to continue")
    raise CheckpointError(f"--continue-from {folder} holds no run (no last.pth or epoch_N.pth in it or in a "
                          "subfolder); name the --checkpoint-dir of the previous session's output")


def copy_run_history(checkpoint: Path, target: Path) -> List[str]:
    """Copy the run that ``checkpoint`` belongs to into ``target`` (its history and ``checkpoint``
    itself, under the same name). The checkpoint is copied last, so a copy cut short leaves no
    resumable file and the same command copies again.

    Returns:
        The names copied, for the log.
    """
    source = Path(checkpoint).parent
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in HISTORY_FOLDERS:
        if (source / name).is_dir():
            shutil.rmtree(target / name, ignore_errors=True)  # a copy cut short: start it again
            shutil.copytree(source / name, target / name, copy_function=shutil.copyfile,
                            ignore=shutil.ignore_patterns(f"{TEMP_PREFIX}*"))
            copied.append(f"{name}/")
    for name in HISTORY_FILES:
        if (source / name).is_file() and name != checkpoint.name:
            _copy_file(source / name, target / name)
            copied.append(name)
    _copy_file(checkpoint, target / checkpoint.name)
    copied.append(checkpoint.name)
    return copied


def _copy_file(source: Path, destination: Path) -> None:
    """Copy through a temp file and a rename: ``destination`` is the old file or the whole new one.
    Only the bytes are copied: a read-only source's permission bits must not make the copy read-only."""
    handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=destination.parent)
    os.close(handle)
    try:
        shutil.copyfile(source, temp_name)
        os.replace(temp_name, destination)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
