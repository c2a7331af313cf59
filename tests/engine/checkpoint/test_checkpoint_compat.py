"""Checkpoints written by earlier versions of the code still resume exactly."""
import shutil
from pathlib import Path

import torch

from engine.build import build_trainer
from engine.callbacks.save_checkpoints import build_payload
from engine.checkpoint import load_checkpoint
from engine.checkpoint.files import atomic_save
from tests.state_compare import assert_same_state

FIXTURE = Path(__file__).parent / "fixtures" / "format2_mid_epoch.pth"
SETTINGS = dict(backbone="test_efficientnet", decoder_channels=8, num_experts=2, top_k=1, detail_channels=4,
                epochs=3, stage1_epochs=1, use_ema=True, ema_decay=0.9, batch_size=4, accumulation_steps=2,
                # the defaults of the version that wrote the fixture (later versions changed them)
                backbone_lr_scale=0.5, decoder_lr_scale=1.0, router_noise=1.0)


def _resume(tiny_config, source: Path, folder: Path):
    trainer = build_trainer(tiny_config(checkpoint_dir=str(folder), resume_from=str(source), **SETTINGS))
    assert (trainer.epoch, trainer.batch_in_epoch, trainer.global_step) == (1, 2, 3)
    return trainer


def test_format2_mid_epoch_checkpoint_resumes_bitwise(tiny_config, tmp_path):
    source = tmp_path / "kaggle-input" / "last.pth"  # read-only input folder, as on Kaggle
    source.parent.mkdir()
    shutil.copy(FIXTURE, source)
    # The same position written in today's format (format 3) by the upgraded Trainer: both files must
    # continue identically, bit for bit, on this machine.
    upgraded = _resume(tiny_config, source, tmp_path / "upgraded")
    format3 = tmp_path / "format3" / "last.pth"
    atomic_save(build_payload(upgraded), format3)
    del upgraded
    runs = {}
    for name, checkpoint in (("format2", source), ("format3", format3)):
        trainer = _resume(tiny_config, checkpoint, tmp_path / f"resumed-{name}")
        trainer.fit()
        assert trainer.global_step == 6
        runs[name] = load_checkpoint(tmp_path / f"resumed-{name}" / "last.pth")
    # every leaf of both files: weights, optimizer, plan, counters, callbacks, RNG (not where each run wrote)
    assert_same_state(runs["format2"], runs["format3"], "last.pth", ignore=("last.pth.config.checkpoint_dir",
                                                                           "last.pth.config.resume_from",
                                                                           "last.pth.metrics.seconds"))


def test_format2_state_is_restored_exactly(tiny_config, tmp_path):
    """Every piece of the old file lands in the Trainer bit for bit (read with plain torch.load, not
    with the upgrade code under test). The fixture was written on another machine: a run never
    stopped on this machine is no reference, since float kernels may differ between CPUs."""
    raw = torch.load(FIXTURE, weights_only=True)
    trainer = _resume(tiny_config, FIXTURE, tmp_path / "resumed")
    assert_same_state(raw["model"], trainer.unwrapped_model.state_dict(), "model")
    assert_same_state(raw["ema"], trainer.averaged_models["ema"].state_dict(), "ema")
    assert_same_state(raw["optimizer"]["state"], trainer.optimizer.state_dict()["state"], "optimizer")
    assert torch.equal(raw["epoch_loss_sum"], trainer.epoch_loss_sum.cpu())
    assert (raw["epoch_updates"], raw["plan"]["stage2_start"]) == (trainer.epoch_updates, trainer.plan.state.stage2_start)
    assert torch.equal(raw["rng"]["torch"], torch.get_rng_state())
