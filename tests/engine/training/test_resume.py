"""Resume: bitwise continuation, mid-epoch checkpoints, re-planned schedules, EMA enabled late."""
import logging
import multiprocessing
import shutil

import pytest
import torch

from engine.build import build_trainer
from engine.callbacks import Callback
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from tests.state_compare import assert_same_state


def final_state(folder):
    return load_checkpoint(folder / "last.pth")


COMMON = dict(epochs=4, stage1_epochs=1, use_ema=True, ema_decay=0.9, batch_size=4, accumulation_steps=2)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    from engine.config import build_config
    from tests.conftest import TINY_SETTINGS

    folder = tmp_path_factory.mktemp("straight")
    build_trainer(build_config({}, dict(TINY_SETTINGS, checkpoint_dir=str(folder), **COMMON))).fit()
    return final_state(folder)


RUN_OWN_VALUES = ("last.pth.config.checkpoint_dir", "last.pth.config.resume_from", "last.pth.metrics.seconds")


def compare_to_straight(straight, resumed, *own_settings):
    """The whole last.pth, every leaf: weights, optimizer, plan, counters, every callback's state, RNG.

    Left out: where each run writes and what it resumed from, wall-clock seconds, and ``own_settings``
    (config keys the test sets differently on purpose).
    """
    assert_same_state(straight, resumed, "last.pth",
                      ignore=RUN_OWN_VALUES + tuple(f"last.pth.config.{key}" for key in own_settings))


def test_stop_after_epochs_then_resume_is_bitwise_identical(tiny_config, tmp_path, straight_run):
    first = build_trainer(tiny_config(stop_after_epochs=2, **COMMON))
    first.fit()
    assert first.epoch == 2 and first.should_stop
    build_trainer(tiny_config(resume_from="auto", **COMMON)).fit()
    compare_to_straight(straight_run, final_state(tmp_path / "ckpt"))


def test_resume_from_explicit_epoch_checkpoint(tiny_config, tmp_path, straight_run):
    build_trainer(tiny_config(stop_after_epochs=2, **COMMON)).fit()
    source = tmp_path / "kept"  # a separate folder, as /kaggle/input would be
    source.mkdir()
    shutil.copy(tmp_path / "ckpt" / "epoch_2.pth", source / "epoch_2.pth")
    before = (source / "epoch_2.pth").read_bytes()
    build_trainer(tiny_config(resume_from=str(source / "epoch_2.pth"), **COMMON)).fit()
    compare_to_straight(straight_run, final_state(tmp_path / "ckpt"))
    assert [p.name for p in source.iterdir()] == ["epoch_2.pth"] and (source / "epoch_2.pth").read_bytes() == before


class StopAtStep(Callback):
    name = "stop_at_step"

    def __init__(self, step):
        self.step = step

    def on_optimizer_step(self, trainer, step):
        if step.step == self.step:
            trainer.request_stop("test stop mid-epoch")


def test_mid_epoch_stop_resumes_from_next_batch(tiny_config, tmp_path, straight_run):
    trainer = build_trainer(tiny_config(**COMMON))
    trainer.add_callback(StopAtStep(5))  # epoch 3, after its first window
    trainer.fit()
    saved = progress(final_state(tmp_path / "ckpt"))
    assert saved["global_step"] == 5 and saved["batch_in_epoch"] == 2 and saved["epoch"] == 2
    build_trainer(tiny_config(resume_from="auto", **COMMON)).fit()
    compare_to_straight(straight_run, final_state(tmp_path / "ckpt"))


def test_plateau_recipe_replans_from_resume_epoch(tiny_config, tmp_path, caplog):
    build_trainer(tiny_config(epochs=3, stage1_epochs=1)).fit()
    best = tmp_path / "ckpt" / "best_model.pth"
    epoch = progress(load_checkpoint(best))["epoch"]
    caplog.set_level(logging.INFO)
    config = tiny_config(resume_from=str(best), checkpoint_dir=str(tmp_path / "phase2"), skip_stage1=True,
                         epochs=6, stage2_lr=5e-4, scheduler="cosine", warmup_epochs=0, use_ema=True)
    trainer = build_trainer(config)
    assert trainer.epoch == epoch and trainer.plan.state.origins[2] == epoch
    assert trainer.plan.lr_at(epoch, 0) == pytest.approx(5e-4)  # the new schedule starts at its peak
    assert trainer.plan.lr_at(5, trainer.plan.steps_per_epoch(2) - 1) == pytest.approx(config.min_lr)
    assert "changed schedule settings" in caplog.text and "epochs: 3 -> 6" in caplog.text
    # --use-ema on a checkpoint without EMA: the shadow starts from the loaded weights
    shadow = trainer.averaged_models["ema"].state_dict()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(shadow[key], value), key
    lrs = []
    trainer.add_callback(type("LR", (Callback,), {
        "name": "lr", "on_optimizer_step": lambda self, t, step: lrs.append(step.lr)})())
    trainer.fit()
    assert lrs[0] == pytest.approx(5e-4) and trainer.epoch == 6


def test_dry_run_shows_the_replanned_schedule(tiny_config, tmp_path, capsys):
    import train_ultimate

    build_trainer(tiny_config(epochs=2, stage1_epochs=1)).fit()
    flags = ["train", "--backbone", "test_convnext", "--no-pretrained", "--num-experts", "3", "--decoder-channels", "16",
             "--img-size", "48", "--synthetic-train-size", "12", "--synthetic-val-size", "6", "--batch-size", "4",
             "--num-workers", "0", "--stage1-epochs", "1", "--lr", "0.001", "--stage2-lr", "0.0005",
             "--checkpoint-dir", str(tmp_path / "ckpt"), "--resume-from", str(tmp_path / "ckpt" / "last.pth"),
             "--epochs", "5", "--skip-stage1", "--dry-run"]
    assert train_ultimate.main(flags) == 0
    out = capsys.readouterr().out
    assert "starting at epoch 3" in out and "changed: epochs: 4 -> 5" not in out
    assert "changed: epochs: 2 -> 5" in out and "stage 2: epochs 3-5" in out


def test_persistent_workers_train_like_the_main_process(tiny_config, tmp_path, straight_run):
    """Two persistent workers, stopped mid-epoch and resumed: the same weights as num_workers=0."""
    settings = dict(COMMON, num_workers=2, persistent_workers=True)
    trainer = build_trainer(tiny_config(**settings))
    trainer.add_callback(StopAtStep(5))
    trainer.fit()
    assert not multiprocessing.active_children(), "fit() must stop the persistent workers"
    build_trainer(tiny_config(resume_from="auto", **settings)).fit()
    compare_to_straight(straight_run, final_state(tmp_path / "ckpt"), "num_workers", "persistent_workers")


def test_multi_scale_training_draws_each_batch_side_from_its_place_in_the_run_and_resumes_bitwise(tiny_config,
                                                                                                  tmp_path):
    """Every training forward gets the side --train-scales draws for (epoch, batch), a mid-epoch resume
    draws the rest of the epoch as the run that never stopped, and the two end bitwise equal."""
    from data.batch_scale import BatchScale

    settings = dict(COMMON, train_scales="0.75,1,1.25")
    straight = build_trainer(tiny_config(checkpoint_dir=str(tmp_path / "straight"), **settings))
    seen = []
    straight.unwrapped_model.register_forward_pre_hook(
        lambda module, inputs: seen.append(inputs[0].shape[-1]) if module.training else None)
    straight.fit()
    draw = BatchScale(48, straight.config.train_sides, straight.config.seed)
    batches = straight.data.samples_per_rank // settings["batch_size"]
    assert seen == [draw.side_at(epoch, index) for epoch in range(4) for index in range(batches)]
    assert set(seen) == {36, 48, 60}

    stopped = build_trainer(tiny_config(**settings))
    stopped.add_callback(StopAtStep(5))  # epoch 3, after its first window
    stopped.fit()
    build_trainer(tiny_config(resume_from="auto", **settings)).fit()
    compare_to_straight(final_state(tmp_path / "straight"), final_state(tmp_path / "ckpt"))
