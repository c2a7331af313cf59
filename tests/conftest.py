"""Shared fixtures: a tiny, fast training configuration for engine and CLI tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Hooks: under CI (CI=1) a skip that is not opt-in fails, and every skip is listed with its reason.
from tests.skip_policy import pytest_runtest_makereport, pytest_terminal_summary  # noqa: E402,F401

TINY_SETTINGS = dict(
    backbone="test_convnext", pretrained=False, num_experts=3, top_k=2, decoder_channels=16, img_size=48,
    synthetic_train_size=12, synthetic_val_size=6, batch_size=4, epochs=4, stage1_epochs=1, lr=1e-3,
    stage2_lr=1e-3, min_lr=1e-5, warmup_epochs=1, num_workers=0, log_interval=2, keep_checkpoints=2,
)


@pytest.fixture
def tiny_config(tmp_path):
    """Factory: ``tiny_config(**overrides)`` -> a validated TrainConfig writing under tmp_path."""
    from engine.config import build_config

    def make(**overrides):
        values = dict(TINY_SETTINGS, checkpoint_dir=str(tmp_path / "ckpt"))
        values.update(overrides)
        return build_config({}, values)

    return make


# The tiny run as `train` flags: TINY_SETTINGS' values for the flags every CLI test passes, over 2 epochs.
TINY_FLAG_SETTINGS = dict({name: TINY_SETTINGS[name] for name in (
    "backbone", "pretrained", "num_experts", "decoder_channels", "img_size", "synthetic_train_size",
    "synthetic_val_size", "batch_size", "num_workers", "stage1_epochs", "lr", "stage2_lr")}, epochs=2)


def tiny_flags(**overrides) -> List[str]:
    """``train`` flags of the tiny run, e.g. ``tiny_flags(epochs=3, use_ema=True, lr=None)``.

    Overrides are setting names as in ``TrainConfig``: a value gives ``--name value``, True ``--name``,
    False ``--no-name``, None drops the flag (the setting's default applies).
    """
    flags: List[str] = []
    for name, value in dict(TINY_FLAG_SETTINGS, **overrides).items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + flag[2:])
        elif value is not None:
            flags += [flag, str(value)]
    return flags


# One short real training run (2 epochs, EMA on) shared by every test that needs a trained checkpoint.
TINY_TRAIN_FLAGS = tiny_flags(use_ema=True, ema_decay=0.5, grad_monitor_interval=1, log_interval=1)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """``--checkpoint-dir`` of a finished tiny run: ``best_model.pth`` (base + EMA), ``last.pth``, report."""
    from tests.cli.in_process import run_main

    folder = tmp_path_factory.mktemp("tiny_run") / "ckpt"
    assert run_main("train", *TINY_TRAIN_FLAGS, "--checkpoint-dir", folder) == 0
    return folder


@pytest.fixture(scope="session")
def tiny_test_set(tmp_path_factory):
    """A synthetic test set (``synth`` layout, 6 scenes of 64 px)."""
    from tests.cli.in_process import run_main

    folder = tmp_path_factory.mktemp("tiny_data") / "synthetic"
    assert run_main("synth", "--output", folder, "--num-train", 0, "--num-test", 6, "--size", 64) == 0
    return folder


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module's inference tests (batched and per-image paths compare exactly)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def read_only_view(tmp_path):
    """Factory: ``read_only_view(folder, required=True)`` -> a read-only view of ``folder`` (a read-only
    bind mount).

    The suite runs as root, which write bits do not stop, so a bind mount remounted read-only is the
    one way to make a folder truly unwritable (EROFS, as a Kaggle input is). Where mounting is not
    allowed (an unprivileged user or a container without CAP_SYS_ADMIN) it skips, with the reason
    (a failure under CI, which runs as root), or returns None when ``required`` is False, for a test
    whose read-only part is only one of its checks.
    """
    import subprocess

    mounts = []

    def make(folder: Path, required: bool = True) -> Optional[Path]:
        view = tmp_path / f"read-only-{len(mounts)}"
        view.mkdir()
        for command in (["mount", "--bind", str(folder), str(view)], ["mount", "-o", "remount,ro,bind", str(view)]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                if command[1] != "--bind":
                    subprocess.run(["umount", str(view)], capture_output=True)
                if not required:
                    return None
                pytest.skip(f"cannot make a read-only bind mount here ({' '.join(command[:3])}: "
                            f"{result.stderr.strip() or result.returncode})")
        mounts.append(view)
        probe = view / ".probe"
        try:
            probe.touch()
        except OSError:
            return view
        probe.unlink()
        pytest.fail(f"{view} was remounted read-only but is still writable")

    yield make
    for view in reversed(mounts):
        subprocess.run(["umount", "-l", str(view)], capture_output=True)
