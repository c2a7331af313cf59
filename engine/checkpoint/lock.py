"""One live run per ``--checkpoint-dir``: a lock file naming the process that writes there.

Two runs writing one folder interleave ``metrics.jsonl`` and replace each other's
``best_model.pth``. The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local disks,
overlay file systems such as Kaggle's ``/kaggle/working`` and NFS v3+), holding the owner's host,
PID and a heartbeat that a background thread refreshes. A lock is stale, and taken over with a
warning, when its process is gone (same host: the PID no longer runs) or its heartbeat stopped
(another host, e.g. a folder copied from an earlier Kaggle session).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

from engine.config import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 120.0  # four missed heartbeats: that run is gone


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OverflowError, ValueError):
        return False
    return True


def read_lock(folder: Path) -> Optional[Dict[str, Any]]:
    """The lock's content, ``{}`` when it exists but is unreadable, None when there is none."""
    path = Path(folder) / LOCK_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {}
    try:
        content = json.loads(text)
    except ValueError:
        return {}
    return content if isinstance(content, dict) else {}


def stale_reason(owner: Dict[str, Any], now: Optional[float] = None) -> Optional[str]:
    """Why the lock of ``owner`` no longer protects a live run, or None when that run is alive."""
    now = time.time() if now is None else now
    host, pid = owner.get("host"), owner.get("pid")
    if not isinstance(pid, int) or not isinstance(host, str):
        return "the lock file is unreadable"
    if host == socket.gethostname():
        if pid == os.getpid():
            return "it was left by an earlier run in this same process"
        return None if _process_alive(pid) else f"process {pid} on {host} is no longer running"
    heartbeat = owner.get("heartbeat")
    if not isinstance(heartbeat, (int, float)) or now - heartbeat > STALE_AFTER_SECONDS:
        return f"the run of host {host} stopped refreshing it"
    return None


def check_unlocked(folder: Path) -> None:
    """Raise ``ConfigError`` when a live run holds ``folder`` (``--dry-run`` asks without locking)."""
    owner = read_lock(folder)
    if owner is not None and stale_reason(owner) is None:
        raise ConfigError(
            f"another run is writing to {folder} (pid {owner['pid']} on {owner['host']}, started "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(owner.get('started', 0)))}); wait for it to end, "
            f"stop it, or pass another --checkpoint-dir (delete {Path(folder) / LOCK_NAME} only if that run is dead)")


class RunLock:
    """Context manager: hold ``folder``'s lock while a run writes there.

    Raises:
        ConfigError: a live run holds the folder.
    """

    def __init__(self, folder: Path, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.heartbeat_seconds = heartbeat_seconds
        self._content: Dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self._content = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                check_unlocked(self.folder)
                reason = stale_reason(read_lock(self.folder) or {})
                logger.warning("Taking over the lock of %s: %s", self.folder, reason)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                json.dump(self._content, stream)
            break
        else:  # another run won the race for the stale lock
            check_unlocked(self.folder)
            raise ConfigError(f"cannot take the lock {self.path}; run the command again")
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            self._content["heartbeat"] = time.time()
            temporary = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
            try:
                temporary.write_text(json.dumps(self._content), encoding="utf-8")
                os.replace(temporary, self.path)
            except OSError:  # a full disk must not end the run; a stale-looking lock is the worst case
                temporary.unlink(missing_ok=True)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        owner = read_lock(self.folder)
        if owner and owner.get("pid") == self._content["pid"] and owner.get("host") == self._content["host"]:
            self.path.unlink(missing_ok=True)


def write_error(folder: Path) -> Optional[OSError]:
    """Why ``folder`` cannot take new files (created if missing), or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            return None
    except OSError as error:
        return error


def check_writable(folder: Path) -> None:
    """Fail before training if ``--checkpoint-dir`` cannot hold checkpoints (a file in its place is
    refused earlier, by ``engine.config.validate``)."""
    error = write_error(folder)
    if error is not None:
        raise ConfigError(f"--checkpoint-dir {folder} is not writable ({error.strerror}); "
                          "pass a writable folder such as /kaggle/working/checkpoints")


def run_lock(folder: str, rank: int = 0):
    """The folder's run lock (one live run per --checkpoint-dir), taken by rank 0 only under torchrun."""
    if rank != 0:
        return contextlib.nullcontext()
    check_writable(Path(folder))
    return RunLock(folder)
