"""``train --devices 2`` on the CPU: the command launches two gloo ranks itself, every stop is agreed by
both ranks (SIGTERM to one rank or to the launcher, mid-window, during validation, during a save),
and a failing rank ends the job with its one-line error."""
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from tests.conftest import tiny_flags
from tests.engine.runtime.test_ddp import ROOT, run_job
from tests.state_compare import assert_same_state

HOOKS = ROOT / "tests" / "engine" / "launch_hooks"
# 16 scenes, 8 per rank, 2 per micro-batch, 2 micro-batches per update: 2 updates per epoch
FLAGS = tiny_flags(synthetic_train_size=16, synthetic_val_size=4, batch_size=2, accumulation_steps=2, epochs=3,
                   top_k=2, lr=None, stage2_lr=None, device="cpu", progress="off", router_noise=0.0)
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def launch(folder: Path, *extra, timeout: float = 240, **hooks) -> tuple:
    """``train_ultimate.py train --devices 2`` in a subprocess; returns (result, seconds)."""
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(HOOKS), str(ROOT)]), **hooks)
    command = [sys.executable, str(ROOT / "train_ultimate.py"), "train", *FLAGS, "--devices", "2",
               "--checkpoint-dir", str(folder), *extra]
    started = time.monotonic()
    result = run_job(command, timeout, env)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("launch") / "straight"
    result, _ = launch(folder, HOOK_THREADS_AT_EXIT="1")
    assert result.returncode == 0, result.stderr[-3000:]
    # the process group was freed before exit, not during the interpreter's finalisation (where gloo's
    # threads now and then abort a rank that finished: exit 134)
    assert "rank 0 gloo threads at exit: 0" in result.stderr and "rank 1 gloo threads at exit: 0" in result.stderr, \
        result.stderr[-3000:]
    assert "Training on 2 CPU processes (gloo), one process each: global batch 8 = 2 per process x 2 x 2 " \
           "accumulation steps; --devices 1 trains on one" in result.stderr
    assert "DDP world size 2" in result.stderr and "ignored under torchrun" not in result.stderr
    return load_checkpoint(folder / "last.pth")


def test_stops_sent_to_one_rank_or_the_launcher_are_agreed_and_resume_to_the_straight_run(tmp_path, straight):
    """One run, stopped three times, each stop at another point, then finished: the same last.pth as
    the run never stopped (every leaf), and each stop ended within seconds with exit code 143."""
    folder = tmp_path / "stopped"
    stops = [  # (hooked rank, event, its number, who gets SIGTERM) -> where last.pth must stand
        (dict(HOOK_RANK="1", HOOK_SIGNAL="train:3:self"), (0, 2, 4)),  # mid-window of update 2, epoch 1
        (dict(HOOK_RANK="0", HOOK_SIGNAL="val:1:launcher"), (1, 2, 0)),  # during epoch 1's validation
        (dict(HOOK_RANK="0", HOOK_SIGNAL="save:1:self"), (2, 4, 0)),  # during epoch 2's first save
    ]
    for index, (hooks, (epoch, step, batch)) in enumerate(stops):
        resume = ["--resume-from", "auto"] if index else []
        result, seconds = launch(folder, *resume, **hooks)
        assert result.returncode == STOPPED_BY_SIGTERM, (hooks, result.stderr[-3000:])
        assert "stopped by SIGTERM: last.pth saved" in result.stderr, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert seconds < 120, (hooks, seconds)  # no rank waited for a collective timeout
        saved = progress(load_checkpoint(folder / "last.pth"))
        assert (saved["epoch"], saved["global_step"], saved["batch_in_epoch"]) == (epoch, step, batch), hooks
    result, _ = launch(folder, "--resume-from", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    finished = load_checkpoint(folder / "last.pth")
    assert_same_state(straight, finished, "last.pth", ignore=("last.pth.config.checkpoint_dir",
                                                             "last.pth.config.resume_from", "last.pth.metrics.seconds"))


def test_a_failing_rank_ends_the_launched_job_with_its_one_line_error(tmp_path):
    result, seconds = launch(tmp_path / "failing", HOOK_RANK="1", HOOK_FAIL="2", HOOK_THREADS_AT_EXIT="1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "rank 1 gloo threads at exit: 0" in result.stderr, result.stderr[-3000:]
    assert "error: /injected/by/launch_hooks: the disk is full" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr[-3000:]
    assert seconds < 120


def test_devices_beyond_the_visible_gpus_and_bad_values_are_refused(tmp_path):
    from engine.runtime.launch import DevicesError, processes_for
    from tests.cli.in_process import assert_refused, run_cli

    assert processes_for("auto", "cpu") == 1 and processes_for("3", "cpu") == 3
    assert_refused(run_cli("train", *FLAGS, "--devices", "0", "--checkpoint-dir", tmp_path / "c"),
                   "--devices must be auto or a positive number")
    assert_refused(run_cli("train", *FLAGS, "--devices", "two", "--checkpoint-dir", tmp_path / "c"), "--devices")
    if processes_for("auto", "auto") == 1:  # no GPU here: asking for GPUs beyond the visible is only a CUDA matter
        with pytest.raises(DevicesError, match="more GPUs than"):
            import torch
            from unittest import mock

            with mock.patch.object(torch.cuda, "is_available", return_value=True), \
                    mock.patch.object(torch.cuda, "device_count", return_value=2):
                processes_for("4", "auto")
