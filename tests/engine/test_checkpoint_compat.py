"""Checkpoints written by earlier versions of the code still resume exactly."""
import shutil
from pathlib import Path

from engine.build import build_trainer
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import saved_weights
from tests.engine.test_resume import assert_same_tensors

FIXTURE = Path(__file__).parent / "fixtures" / "format2_mid_epoch.pth"
SETTINGS = dict(backbone="test_efficientnet", decoder_channels=8, num_experts=2, top_k=1, detail_channels=4,
                epochs=3, stage1_epochs=1, use_ema=True, ema_decay=0.9, batch_size=4, accumulation_steps=2)


def test_format2_mid_epoch_checkpoint_resumes_bitwise(tiny_config, tmp_path):
    straight = build_trainer(tiny_config(checkpoint_dir=str(tmp_path / "straight"), **SETTINGS))
    straight.fit()
    source = tmp_path / "kaggle-input" / "last.pth"  # read-only input folder, as on Kaggle
    source.parent.mkdir()
    shutil.copy(FIXTURE, source)
    resumed = build_trainer(tiny_config(checkpoint_dir=str(tmp_path / "resumed"), resume_from=str(source),
                                        **SETTINGS))
    assert (resumed.epoch, resumed.batch_in_epoch, resumed.global_step) == (1, 2, 3)
    resumed.fit()
    expected = load_checkpoint(tmp_path / "straight" / "last.pth")
    actual = load_checkpoint(tmp_path / "resumed" / "last.pth")
    for weights in ("base", "ema"):
        assert_same_tensors(saved_weights(expected, weights), saved_weights(actual, weights), weights)
    assert_same_tensors(expected["trainer"]["optimizer"], actual["trainer"]["optimizer"], "optimizer")
    assert expected["trainer"]["callbacks"]["checkpoint"] == actual["trainer"]["callbacks"]["checkpoint"]
    assert resumed.global_step == straight.global_step == 6
