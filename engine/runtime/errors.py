"""One-line messages for the errors a user's environment causes (files, folders, disks, workers).

``train_ultimate.main`` is the only boundary that prints them: every command ends a user error
with one line and exit code 2, while a bug in our code keeps its traceback.
"""
from __future__ import annotations

import contextlib
import errno
import re
from typing import Iterator

# What to do about each errno a user's paths can cause; anything else prints the OS's own words.
OS_ERROR_ADVICE = {
    errno.ENOSPC: "the disk is full: delete what you can spare (old epoch_N.pth snapshots, a --cache disk resize "
                  "cache, other runs) or write to another disk; a training run writes less with a lower "
                  "--keep-checkpoints; then run the command again (train: --resume-from auto)",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write to another disk",
    errno.EROFS: "it is on a read-only file system, so it is not writable: choose a writable folder",
    errno.EACCES: "permission denied, it is not writable or readable by you: fix its permissions or choose "
                  "another path",
    errno.EPERM: "the operation is not permitted: fix the path's permissions or choose another path",
    errno.ENOENT: "it does not exist: check the path",
    errno.ENOTDIR: "a part of the path is a file where a folder is needed: check the path",
    errno.EISDIR: "it is a folder where a file is needed: name a file",
    errno.EEXIST: "it already exists and is in the way (e.g. a file where a folder is needed): choose another path",
    errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower --num-workers",
    errno.ENOMEM: "the machine is out of memory: lower --batch-size, --img-size or --num-workers",
}

_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def os_error_message(error: OSError) -> str:
    """``error: <path>: <what to do>`` for an OSError caused by the user's files or disks."""
    paths = [str(path) for path in (error.filename, error.filename2) if path is not None]
    where = " -> ".join(paths) if paths else "a file operation"
    advice = OS_ERROR_ADVICE.get(error.errno)
    reason = error.strerror or str(error) or type(error).__name__
    if advice is None:
        return f"{where}: {reason}; check the path and the disk, then run the command again"
    return f"{where}: {advice} ({reason})"


@contextlib.contextmanager
def naming(path) -> Iterator[None]:
    """Give an OSError raised inside without a file name (a failed write through an open file: a
    full disk) the name of ``path``, so its one line says which file could not be written."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


def one_line(error: BaseException) -> str:
    """The error's message on one line; a DataLoader worker's re-raised error keeps only the
    original message (torch prefixes it with the worker's whole traceback)."""
    message = str(error)
    if _WORKER_WRAPPER.match(message):
        marker = f"{type(error).__name__}: "
        message = message[message.rfind(marker) + len(marker):] if marker in message else message
    return " ".join(message.split())


class DeviceOutOfMemoryError(RuntimeError):
    """The GPU ran out of memory; the message names the settings in use and the flags that lower it."""


def out_of_memory_message(where: str, batch_size: int, batch_flag: str, img_size: int, amp: str,
                          grad_checkpointing: bool) -> str:
    """One line for a CUDA out-of-memory error during training or validation.

    Args:
        where: what was running, e.g. ``"stage 2 training (epoch 3, batch 17)"``.
        batch_size: the batch size in use there; ``batch_flag`` is the flag that sets it.
    """
    lower = [f"a smaller {batch_flag} (now {batch_size}; raise --accumulation-steps to keep the effective batch)",
             f"a smaller --img-size (now {img_size})"]
    if not grad_checkpointing:
        lower.append("--grad-checkpointing")
    if amp == "off":
        lower.append("--amp auto")
    return (f"CUDA out of memory in {where} at batch size {batch_size}, image size {img_size}: try "
            + ", ".join(lower) + "; last.pth holds the last saved position, resume it with --resume-from auto")
