"""Checkpoint files: atomic writes, safe (``weights_only``) loads, finding the newest good one.

A checkpoint holds only tensors and plain containers, so ``torch.load(weights_only=True)`` reads
it and a file carrying arbitrary pickled objects is refused before any of its code runs.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

from engine.checkpoint.format import CheckpointError, progress, upgrade

TEMP_PREFIX = ".tmp-ckpt-"


class _SaveInProgress:
    """Counts the saves running in this process and holds an exit asked for during one of them.

    A signal that means "exit now" (a second SIGTERM) must not land inside ``torch.save``: the
    half-written zip raises a RuntimeError traceback. It waits for the save to finish instead.
    """

    running = 0
    deferred_exit: Optional[int] = None


def save_in_progress() -> bool:
    """Whether a checkpoint file is being written right now (signal handlers ask)."""
    return _SaveInProgress.running > 0


def exit_after_save(code: int) -> None:
    """Raise ``SystemExit(code)`` as soon as the save in progress has finished (or failed)."""
    _SaveInProgress.deferred_exit = code


def atomic_save(payload: Dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` via a temp file in the same folder, fsync, then ``os.replace``.

    The previous file at ``path`` stays intact whatever happens (full disk, a kill, a signal).

    Raises:
        OSError: the folder is not writable or the disk is full (``errno`` says which); the
            temp file is removed.
    """
    path = Path(path)
    _SaveInProgress.running += 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".pth", dir=path.parent)
        stream = None
        try:
            with _open_for_writing(handle) as stream:
                torch.save(payload, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_name, path)
        except BaseException as error:
            Path(temp_name).unlink(missing_ok=True)
            # A write that fails inside torch.save's zip writer can surface as the writer's own
            # RuntimeError ("unexpected pos"), raised while closing: the first OSError is the cause.
            cause = error if isinstance(error, OSError) else getattr(stream, "first_error", None)
            if cause is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
                # A failed write inside torch.save names no file: name the checkpoint.
                raise OSError(cause.errno, cause.strerror, str(path)) from error
            raise
        _fsync_directory(path.parent)
    finally:
        _SaveInProgress.running -= 1
        code, _SaveInProgress.deferred_exit = _SaveInProgress.deferred_exit, None
        if code is not None and not save_in_progress():
            raise SystemExit(code)


class _WriteErrorRecorder(io.BufferedWriter):
    """A buffered file that remembers the first OSError of its writes, whatever replaces it later."""

    first_error: Optional[OSError] = None

    def _recorded(self, method, *args):
        try:
            return method(*args)
        except OSError as error:
            if self.first_error is None:
                self.first_error = error
            raise

    def write(self, data) -> int:
        return self._recorded(super().write, data)

    def flush(self) -> None:
        return self._recorded(super().flush)


def _open_for_writing(handle: int) -> _WriteErrorRecorder:
    return _WriteErrorRecorder(io.FileIO(handle, "wb"))


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def remove_stale_temp_files(folder: Path) -> int:
    """Delete temp files left by a save that was killed; returns how many were removed."""
    removed = 0
    for stale in Path(folder).glob(f"{TEMP_PREFIX}*"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


def load_checkpoint(path: Path, map_location: str = "cpu", mmap: bool = False) -> Dict[str, Any]:
    """Load a checkpoint safely, in the current layout (``format.upgrade``); raise ``CheckpointError``
    naming what is wrong.

    With ``mmap`` the tensors are memory-mapped and read only when touched (cheap metadata reads).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; name a .pth file in it (e.g. {path / 'best_model.pth'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        # A refused class/function reference ("Unsupported global") means the file carries code;
        # anything else from the unpickler (e.g. "Unsupported operand") means it is not a checkpoint.
        if "Unsupported global" in str(error) or "GLOBAL" in str(error):
            raise CheckpointError(
                f"checkpoint {path} contains arbitrary pickled objects and was refused (weights_only=True); "
                "only load files you trust, re-saved as plain state_dicts") from None
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch checkpoint; "
                              "use another file or --resume-from auto") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError,
            TypeError, AttributeError) as error:  # what torch.load raises on arbitrary bytes varies
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint ({_first_line(error)}); "
            "use another file or --resume-from auto") from None
    if not isinstance(payload, dict) or not ("model" in payload or "trainer" in payload):
        raise CheckpointError(f"{path} is not a checkpoint of this project (no model weights in it)")
    return upgrade(payload)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else type(error).__name__


def find_resumable(folder: Path) -> Optional[Path]:
    """The checkpoint in ``folder`` that loads and is furthest along (global step, then last.pth, then mtime).

    Damaged files are skipped with a warning naming them. Files are memory-mapped, so ranking
    reads each one's small metadata, not its tensors (a folder of 70 MB edgenext_base
    checkpoints is scanned in milliseconds). The zip structure and the pickle are still fully
    checked; torch checks no CRCs, so damaged tensor bytes go unnoticed with or without mmap.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    best_key, best_path = None, None
    for candidate in sorted(folder.glob("*.pth")):
        if candidate.name.startswith(TEMP_PREFIX):
            continue
        try:
            payload = load_checkpoint(candidate, mmap=True)
        except CheckpointError as error:
            logger.warning("Skipping unusable checkpoint: %s", error)
            continue
        position = progress(payload)
        # Ties (last.pth and epoch_N.pth of one save) go to last.pth, the name every command expects.
        key = (int(position.get("global_step", -1)), int(position.get("batch_in_epoch", 0)),
               candidate.name == "last.pth", candidate.stat().st_mtime)
        if best_key is None or key > best_key:
            best_key, best_path = key, candidate
    return best_path


def capture_rng_state() -> Dict[str, Any]:
    """RNG states as tensors / plain values (numpy's state array is stored as a tensor)."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
        "numpy_has_gauss": int(numpy_state[3]),
        "numpy_gauss": float(numpy_state[4]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
