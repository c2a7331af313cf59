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
                backbone_lr_scale=0.5, decoder_lr_scale=1.0, router_noise=1.0, min_feature_stride=4)


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


def test_the_fixture_continues_and_predicts_with_its_own_architecture_after_the_defaults_moved(tmp_path):
    """The fixture was written when the decoder started at stride 4 (default 8 since the field table):
    neither continuing it from the command line nor loading it for prediction needs the flag."""
    from engine.api import load_model
    from engine.training.run_config import resolve_run_config

    source = tmp_path / "last.pth"
    shutil.copy(FIXTURE, source)
    config, _ = resolve_run_config({}, {"resume_from": str(source), "checkpoint_dir": str(tmp_path / "run")})
    assert (config.min_feature_stride, config.decoder_channels) == (4, 8)
    assert build_trainer(config).global_step == 3
    model = load_model(source, weights="base", device="cpu")
    assert model.model_config.min_feature_stride == 4
    assert model.predictor.model.decoder.fusion.lateral[0].out_channels == 8
