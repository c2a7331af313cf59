"""fp16 numerics through the real Trainer on the CPU: autocast fp16 with a CPU GradScaler (torch >= 2.4).

A T4 trains with fp16 + GradScaler; this is the closest the CPU gets. An overflowing step must be
skipped by the scaler (weights, weight EMA and step count untouched, INFO not WARNING), a non-finite
loss with finite gradients must not reach the weights, and resume must keep the scaler bitwise.
"""
from __future__ import annotations

import logging

import torch

from engine.build import build_trainer
from engine.callbacks import Callback, Order
from engine.checkpoint import load_checkpoint
from tests.state_compare import assert_same_state

FP16 = dict(amp="fp16", device="cpu", epochs=2, stage1_epochs=1, batch_size=4, use_ema=True, ema_decay=0.5)
OVERFLOW_AT_UPDATE = 2  # of 3 per epoch (12 scenes at batch 4)


class OverflowOnce(Callback):
    """Makes the gradients of one update overflow, as fp16 activations' gradients do at a too-high
    loss scale: a tensor hook multiplies a decoder weight's gradient by inf during that update's
    backward. Also records weights, EMA shadow and scaler scale after every update (skipped or not)."""

    name = "overflow_once"
    order = Order.WEIGHTS + 1  # after the weight EMA: sees its update

    def __init__(self, update: int):
        self.update, self.backward_passes = update, 0
        self.after_update = []  # (global_step, weights, ema shadow, scale) after each completed update

    def on_train_start(self, trainer):
        parameter = next(p for name, p in trainer.model.named_parameters() if name.startswith("decoder"))
        parameter.register_hook(self._poison)

    def _poison(self, grad):  # one micro-batch per update here (no accumulation)
        self.backward_passes += 1
        return grad * float("inf") if self.backward_passes == self.update else grad

    def on_optimizer_step(self, trainer, step):
        self.after_update.append(self._snapshot(trainer))

    @staticmethod
    def _snapshot(trainer):
        weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        shadow = {k: v.clone() for k, v in trainer.averaged_models["ema"].state_dict().items()}
        return trainer.global_step, weights, shadow, trainer.precision.scaler.get_scale()


class NaNLossFiniteObjective(torch.nn.Module):
    """The criterion, with a NaN logged loss but a finite backward objective on one call; records the
    weights before each call."""

    def __init__(self, criterion, model, bad_call: int):
        super().__init__()
        self.criterion, self.model, self.bad_call, self.calls = criterion, model, bad_call, 0
        self.weights_before_call = {}

    def forward(self, output, masks):
        self.calls += 1
        self.weights_before_call[self.calls] = {k: v.clone() for k, v in self.model.named_parameters()}
        losses = self.criterion(output, masks)
        if self.calls == self.bad_call:
            losses = dict(losses, objective=losses["loss"], loss=losses["loss"] * float("nan"))
        return losses


def test_fp16_training_on_cpu_skips_an_overflowing_step_like_a_t4(tiny_config, caplog):
    caplog.set_level(logging.INFO)
    trainer = build_trainer(tiny_config(**dict(FP16, epochs=1, stage1_epochs=1)))
    assert trainer.precision.dtype is torch.float16 and trainer.precision.scaler is not None
    probe = OverflowOnce(OVERFLOW_AT_UPDATE)
    trainer.add_callback(probe)
    initial_scale = trainer.precision.scaler.get_scale()
    trainer.fit()
    # The overflowing update is skipped: 3 windows, 2 optimizer steps, one recorded skip.
    assert trainer.guard.total_skipped == 1 and trainer.global_step == 2
    assert [snapshot[0] for snapshot in probe.after_update] == [1, 2]
    assert trainer.precision.scaler.get_scale() == initial_scale / 2  # lowered once, by the backoff factor
    skip_lines = [r for r in caplog.records if "Skipped update" in r.getMessage()]
    assert [r.levelno for r in skip_lines] == [logging.INFO] and "GradScaler" in skip_lines[0].getMessage()
    # The guard and the weight EMA agree: exactly one EMA update (decay 0.5) between the two applied
    # steps, none for the skipped one in between.
    (_, _, shadow_1, _), (_, weights_2, shadow_2, _) = probe.after_update
    for key, value in shadow_2.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, torch.lerp(shadow_1[key], weights_2[key], 0.5), msg=key)
    for key, value in trainer.model.state_dict().items():
        assert torch.isfinite(value).all() if value.is_floating_point() else True, key


def test_non_finite_loss_with_finite_gradients_leaves_weights_untouched_under_the_scaler(tiny_config, caplog):
    """The logged loss can be NaN while the backward objective is finite (e.g. with loss normalisation):
    GradScaler.step would apply that update, since it only looks at the gradients."""
    trainer = build_trainer(tiny_config(**dict(FP16, epochs=1)))
    trainer.criterion = NaNLossFiniteObjective(trainer.criterion, trainer.model, bad_call=2)
    scale = trainer.precision.scaler.get_scale()
    trainer.fit()
    assert trainer.guard.total_skipped == 1 and trainer.global_step == 2
    before = trainer.criterion.weights_before_call
    for key, value in before[3].items():  # the weights the third window saw equal those after update 1
        assert torch.equal(value, before[2][key]), key
    assert trainer.precision.scaler.get_scale() == scale  # finite gradients: no reason to back off
    assert any(r.levelno == logging.WARNING and "NaN/Inf loss" in r.getMessage() for r in caplog.records)


def test_resume_keeps_the_grad_scaler_state_bitwise(tiny_config, tmp_path):
    def run(folder, overflow_at=OVERFLOW_AT_UPDATE, **overrides):
        trainer = build_trainer(tiny_config(**dict(FP16, checkpoint_dir=str(tmp_path / folder), **overrides)))
        trainer.add_callback(OverflowOnce(overflow_at))  # in epoch 1, before the stop
        trainer.fit()
        return trainer

    straight = run("straight")
    stopped = run("resumed", stop_after_epochs=1)
    saved_scaler = load_checkpoint(tmp_path / "resumed" / "last.pth")["trainer"]["precision"]
    assert saved_scaler["scale"] == 2.0 ** 15 and saved_scaler["_growth_tracker"] == 1  # not the fresh state
    assert stopped.epoch == 1
    resumed = run("resumed", overflow_at=0, resume_from="auto")  # epoch 2 of both runs has no overflow
    assert resumed.precision.scaler.state_dict() == straight.precision.scaler.state_dict()
    straight_state, resumed_state = (load_checkpoint(tmp_path / folder / "last.pth")["trainer"]
                                     for folder in ("straight", "resumed"))
    assert_same_state(straight_state, resumed_state, "trainer")  # every leaf, the callbacks' state included
