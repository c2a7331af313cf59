"""Shared fixtures: a tiny, fast training configuration for engine and CLI tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

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
