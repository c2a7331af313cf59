"""The run lock: refused while its owner lives, taken over (with a warning) once it is gone."""
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from engine.checkpoint.lock import LOCK_NAME, STALE_AFTER_SECONDS, RunLock, read_lock
from engine.config import ConfigError


def write_lock(folder, **content):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(content))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_is_held_during_the_run_and_released_after(tmp_path):
    with RunLock(tmp_path / "run"):
        owner = read_lock(tmp_path / "run")
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_live_process_on_this_host_keeps_its_lock(tmp_path):
    write_lock(tmp_path, host=socket.gethostname(), pid=os.getppid(), started=time.time(), heartbeat=time.time())
    before = (tmp_path / LOCK_NAME).read_bytes()
    with pytest.raises(ConfigError, match=f"pid {os.getppid()}"):
        RunLock(tmp_path).__enter__()
    assert (tmp_path / LOCK_NAME).read_bytes() == before, "a refused run leaves the owner's lock alone"


@pytest.mark.parametrize("owner", ["dead-pid", "other-host-silent", "garbage"])
def test_stale_locks_are_taken_over_with_a_warning(owner, tmp_path, caplog):
    if owner == "dead-pid":
        write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid(), started=0, heartbeat=time.time())
    elif owner == "other-host-silent":  # e.g. a folder copied from an earlier Kaggle session
        old = time.time() - STALE_AFTER_SECONDS - 5
        write_lock(tmp_path, host="kaggle-previous-session", pid=os.getpid(), started=old, heartbeat=old)
    else:
        (tmp_path / LOCK_NAME).write_bytes(b"\x00\xff")
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert "Taking over the lock" in caplog.text


def test_a_live_run_on_another_host_keeps_its_lock(tmp_path):
    write_lock(tmp_path, host="other-machine", pid=1, started=time.time(), heartbeat=time.time())
    with pytest.raises(ConfigError, match="other-machine"):
        RunLock(tmp_path).__enter__()


def test_the_heartbeat_is_refreshed_while_the_run_lives(tmp_path):
    with RunLock(tmp_path, heartbeat_seconds=0.05):
        first = read_lock(tmp_path)["heartbeat"]
        deadline = time.time() + 5
        while read_lock(tmp_path).get("heartbeat") == first and time.time() < deadline:
            time.sleep(0.05)
        assert read_lock(tmp_path)["heartbeat"] > first
