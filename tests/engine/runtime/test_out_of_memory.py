"""CUDA out of memory is a user error: one line naming what ran and the flags that lower memory, exit 2,
and no checkpoint written after it (the weights may be half-updated when the error strikes)."""
from __future__ import annotations

import json

import pytest
import torch

from engine.training.precision import Precision
import engine.training.trainer as trainer_module
from tests.cli.in_process import assert_refused, run_cli
from tests.conftest import TINY_TRAIN_FLAGS

STEPS_PER_EPOCH = 3  # TINY_TRAIN_FLAGS: 12 scenes at batch 4


def cuda_oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.75 GiB total)")


def run_until_failure(folder, monkeypatch, patch_target, failing_call: int, half_update: bool = False):
    """Train TINY_TRAIN_FLAGS, with ``patch_target`` ("step" or "validate") raising CUDA OOM on its
    ``failing_call``-th call; returns the CLI result and last.pth's bytes as they were just before."""
    calls, last_before = [], {}
    owner, name = (Precision, "step") if patch_target == "step" else (trainer_module, "validation_pass")
    original = getattr(owner, name)

    def failing(*args, **kwargs):  # Precision.step(self, optimizer, ...) or validation_pass(module, ...)
        calls.append(1)
        if len(calls) == failing_call:
            last_before["bytes"] = (folder / "last.pth").read_bytes()
            if half_update:  # part of the parameters already stepped when the allocation failed
                optimizer = args[1]
                optimizer.param_groups[0]["params"][0].data.add_(1.0)
            raise cuda_oom()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--checkpoint-dir", folder)
    return result, last_before["bytes"]


def test_mid_epoch_oom_names_the_stage_settings_and_flags_and_keeps_last_pth(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    result, last_before = run_until_failure(folder, monkeypatch, "step", STEPS_PER_EPOCH + 2, half_update=True)
    assert_refused(result, "CUDA out of memory", "stage 2 training (epoch 2, batch", "batch size 4",
                   "image size 48", "--stage2-batch-size", "--accumulation-steps", "--img-size",
                   "--grad-checkpointing", "--resume-from auto")
    assert (folder / "last.pth").read_bytes() == last_before  # no half-updated checkpoint
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1]


def test_oom_in_validation_names_the_validation_batch(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    result, last_before = run_until_failure(folder, monkeypatch, "validate", 3)  # base weights, epoch 2
    assert_refused(result, "CUDA out of memory in validation after epoch 2", "--batch-size (now 4")
    assert "--stage2-batch-size" not in result.stderr
    assert (folder / "last.pth").read_bytes() == last_before


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_oom_outside_training_is_one_line(command, tiny_run_dir, tiny_test_set, tmp_path, monkeypatch):
    from engine.commands import predictor

    def out_of_memory(*args, **kwargs):
        raise cuda_oom()

    monkeypatch.setattr(predictor.Predictor, "probabilities", out_of_memory)  # every predict path runs it
    paths = (["--dataset-path", tiny_test_set, "--output", tmp_path / "scores.json"] if command == "eval"
             else ["--input", tiny_test_set / "Test" / "Image", "--output", tmp_path / "masks"])
    result = run_cli(command, "--checkpoint", tiny_run_dir / "best_model.pth", *paths)
    assert_refused(result, "CUDA out of memory", "--img-size", "--device cpu")
