"""A run survives SIGTERM and random SIGKILLs (even mid-save) and always resumes to the end."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.checkpoint.files import TEMP_PREFIX
from engine.checkpoint.format import progress

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train", "--backbone", "test_convnext", "--no-pretrained", "--num-experts", "3", "--decoder-channels", "16",
        "--img-size", "48", "--synthetic-train-size", "24", "--synthetic-val-size", "4", "--batch-size", "2",
        "--num-workers", "0", "--stage1-epochs", "1", "--lr", "0.001", "--stage2-lr", "0.001", "--use-ema"]


def start(folder: Path, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "train_ultimate.py"), *TINY, "--checkpoint-dir", str(folder),
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_training(process, folder: Path, timeout=120):
    """Until the run has written a checkpoint (so it is inside the loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (folder / "last.pth").exists():
            return
        time.sleep(0.1)
    raise AssertionError("training did not start")


def test_sigterm_mid_epoch_saves_and_resumes(tmp_path):
    folder = tmp_path / "ckpt"
    process = start(folder, "--epochs", "50", "--save-every-minutes", "0.001")
    wait_for_training(process, folder)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    saved = progress(load_checkpoint(folder / "last.pth"))
    resumed = subprocess.run([sys.executable, str(ROOT / "train_ultimate.py"), *TINY, "--checkpoint-dir", str(folder),
                              "--epochs", str(saved["epoch"] + 1), "--resume-from", "auto"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert progress(load_checkpoint(folder / "last.pth"))["epoch"] == saved["epoch"] + 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_process_group_with_workers_saves_cleanly(tmp_path, signum):
    """Kaggle, docker stop and Ctrl-C signal every process of the group, DataLoader workers included."""
    folder = tmp_path / "ckpt"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train_ultimate.py"), *TINY, "--checkpoint-dir", str(folder), "--epochs", "50",
         "--save-every-minutes", "0.001", "--num-workers", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_training(process, folder)
    time.sleep(0.5)
    os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "Traceback" not in stderr
    torch.load(folder / "last.pth", weights_only=True)


def all_checkpoints_load(folder: Path):
    for path in folder.glob("*.pth"):
        if path.name.startswith(TEMP_PREFIX):
            continue  # a save killed half-way: the temp file is never read and is cleaned up on start
        torch.load(path, weights_only=True)


def temp_files(folder: Path):
    """The temp files of saves in progress (or killed): a save writes one, then renames it over its target."""
    return {path.name for path in folder.glob(f"{TEMP_PREFIX}*")} if folder.is_dir() else set()


def kill_when_a_save_starts(process, folder: Path, earlier, timeout=120):
    """SIGKILL ``process`` the moment a temp file that was not in ``earlier`` appears: inside a save."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if temp_files(folder) - earlier:
            os.kill(process.pid, signal.SIGKILL)
            return
    raise AssertionError("no save started")


@pytest.mark.slow
def test_random_sigkills_never_corrupt_checkpoints(tmp_path):
    """Ten SIGKILLs, every other one the moment a save has begun, the others at random times; then
    the run resumes to its end. A kill inside a save leaves that save's temp file behind (a save that
    finished renamed it, one that failed removed it): at least three kills must show one, so the
    test proves it killed saves half-way, and every checkpoint still loads."""
    folder, epochs = tmp_path / "ckpt", 4
    rng = random.Random(0)
    # Saving every optimizer step makes many kills land inside a save.
    extra = ("--epochs", str(epochs), "--save-every-minutes", "0.0001", "--resume-from", "auto")
    killed_mid_save = 0
    for attempt in range(10):
        earlier = temp_files(folder)  # left by the previous kill; this start removes them
        process = start(folder, *extra)
        if not (folder / "last.pth").exists():
            wait_for_training(process, folder)
            time.sleep(rng.uniform(0.0, 1.0))
        elif attempt % 2:
            kill_when_a_save_starts(process, folder, earlier)
        else:
            time.sleep(rng.uniform(3.0, 6.0))  # start-up (imports) then a little training
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
        killed_mid_save += bool(temp_files(folder) - earlier)
        all_checkpoints_load(folder)
    assert killed_mid_save >= 3
    final = subprocess.run([sys.executable, str(ROOT / "train_ultimate.py"), *TINY, "--checkpoint-dir", str(folder),
                            *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    all_checkpoints_load(folder)
    assert progress(load_checkpoint(folder / "last.pth"))["epoch"] == epochs
    assert not temp_files(folder)  # the stale temp files of the killed saves were cleaned up on start
