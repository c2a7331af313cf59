"""DDP through torchrun with gloo on the CPU: identical ranks, rank-0-only files, same result as one process."""
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest
import torch

from tests.conftest import TINY_SETTINGS, tiny_flags

ROOT = Path(__file__).resolve().parents[3]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Batch-independent model (no router noise, no balance loss) so 2 ranks x batch 2 == 1 process x batch 4.
SETTINGS = dict(TINY_SETTINGS, synthetic_train_size=16, epochs=2, stage1_epochs=1, router_noise=0.0,
                moe_loss_weight=0.0, use_ema=True, ema_decay=0.5, device="cpu")


def torchrun(*args, timeout: float = 300, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 *args``; past ``timeout`` the test fails with every process of
    the job killed (torchrun starts each rank in a session of its own, so killing torchrun alone, as
    ``subprocess.run`` does, would leave hung ranks behind)."""
    return run_job([*TORCHRUN, *args], timeout, None if env is None else {**os.environ, **env})


def run_job(command: List[str], timeout: float, env: Optional[dict]) -> subprocess.CompletedProcess:
    """Run ``command`` in ROOT; past ``timeout`` the test fails with the process and every process
    below it killed (launched ranks run in sessions of their own)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"{Path(command[1]).name} still running after {timeout} s (killed):\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _descendants(pid: int) -> List[int]:
    """Every process below ``pid``, from /proc (Linux)."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def train_two_ranks(folder: Path, timeout: float = 300, **overrides) -> tuple:
    """Both ranks' final states of a 2-process gloo run of ``SETTINGS`` (batch 2 per rank), checked
    to be identical."""
    folder.mkdir()
    ddp = dict(SETTINGS, batch_size=2, checkpoint_dir=str(folder / "ckpt"), **overrides)
    result = torchrun(str(ROOT / "tests/engine/ddp_worker.py"), json.dumps(ddp), str(folder), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # stage 2 re-wrapped the model: the stage-1 wrapper (and its reducer's gradient buckets) is gone; and
    # fit() dropped the stage-2 one, which kept the process group's gloo threads alive into exit
    assert rank0["live_ddp_wrappers"] == rank1["live_ddp_wrappers"] == 0
    for part in ("model", "ema"):
        for key in rank0[part]:
            assert torch.equal(rank0[part][key], rank1[part][key]), f"{part}.{key}"
    return rank0, rank1


@pytest.fixture(scope="module")
def eager_ranks(tmp_path_factory):
    return train_two_ranks(tmp_path_factory.mktemp("ddp") / "eager")


@pytest.mark.slow
def test_two_ranks_match_each_other_and_one_process(tmp_path, eager_ranks):
    from engine.build import build_trainer
    from engine.config import build_config

    rank0 = eager_ranks[0]
    single = build_trainer(build_config({}, dict(SETTINGS, batch_size=4, checkpoint_dir=str(tmp_path / "one"))))
    single.fit()
    for key, value in single.model.state_dict().items():
        if value.is_floating_point() and "dispatch_fraction" not in key:
            assert torch.allclose(value, rank0["model"][key], rtol=1e-3, atol=1e-5), key
    # Per-image validation scores, gathered by image index from the two ranks' halves of the set,
    # equal one process's on the same weights, row for row (the health report pairs them by image).
    assert torch.equal(rank0["per_image"], eager_ranks[1]["per_image"])
    single.unwrapped_model.load_state_dict(rank0["model"])
    single.validate(single.model)
    assert rank0["per_image"].shape == (SETTINGS["synthetic_val_size"], 2)
    torch.testing.assert_close(single.last_per_image_scores, rank0["per_image"], rtol=1e-4, atol=2e-3)


@pytest.mark.slow
def test_compiled_model_under_ddp_matches_eager_ddp(tmp_path, eager_ranks):
    """--compile under DDP: DDP wraps the in-place compiled model and is re-wrapped at stage 2.

    Slow, not hung: each rank compiles the forward 6-8 times (TORCH_LOGS=recompiles: grad mode for
    validation, batch sizes 2 / 1 / 4, requires_grad flipping at stage 2, then a dynamic batch). Alone
    on 2 busy cores (load 6) it took 3 min 54 s on torch 2.14 and 4 min 05 s on torch 2.10, Kaggle's,
    so the 300 s other DDP runs get is too short on a loaded machine: this one gets 600 s.
    """
    rank0, rank1 = train_two_ranks(tmp_path / "compiled", timeout=600, compile=True, grad_monitor_interval=2)
    assert rank0["compiled_calls"] > 0 and rank1["compiled_calls"] > 0
    for part in ("model", "ema"):
        for key, value in eager_ranks[0][part].items():
            torch.testing.assert_close(rank0[part][key], value, rtol=1e-4, atol=1e-5, msg=f"{part}.{key}")


@pytest.mark.slow
def test_real_cli_under_torchrun_writes_once_and_resumes(tmp_path, caplog):
    folder = tmp_path / "ckpt"
    flags = ["train_ultimate.py", "train", *tiny_flags(top_k=2, batch_size=2, epochs=None, lr=None, stage2_lr=None,
                                                       device="cpu"), "--checkpoint-dir", str(folder)]
    first = torchrun(*flags, "--epochs", "2", "--stop-after-epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(*flags, "--epochs", "2", "--resume-from", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # one writer: no duplicated lines
    assert len(list((folder / "runs").glob("events.out.tfevents.*"))) == 2  # one per invocation, rank 0 only
    assert "DDP world size 2" in first.stderr and "Resumed from" in resumed.stderr
    changed = torchrun(*flags[:-2], "--checkpoint-dir", str(tmp_path / "other"), "--epochs", "3",
                       "--resume-from", str(folder / "last.pth"), "--dry-run")
    assert changed.returncode == 0
    # Resuming a 2-process checkpoint in one process works and says why it is not bitwise.
    from engine.build import build_trainer
    from engine.config import build_config

    settings = dict(TINY_SETTINGS, synthetic_train_size=12, synthetic_val_size=6, batch_size=2, epochs=3,
                    device="cpu", checkpoint_dir=str(tmp_path / "single"), resume_from=str(folder / "last.pth"))
    trainer = build_trainer(build_config({}, settings))
    assert trainer.epoch == 2 and "written by 2 process(es), this run has 1" in caplog.text
