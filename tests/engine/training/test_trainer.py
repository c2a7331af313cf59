"""Trainer behaviour: accumulation windows, EMA once per update, stages, checkpoint contents."""
import math

import pytest
import torch

from engine.build import build_trainer
from engine.callbacks import Callback
from engine.callbacks.weight_ema import WeightEMACallback
from engine.training.schedule import WindowPlan


def capture_updates(trainer):
    """Record the gradients seen by every optimizer step."""
    captured = []
    original_step = trainer.precision.step

    def spy(optimizer, apply=True):
        captured.append({name: p.grad.detach().clone() for name, p in trainer.model.named_parameters()
                         if p.grad is not None})
        original_step(optimizer, apply)

    trainer.precision.step = spy
    return captured


@pytest.mark.parametrize("micro, accumulation, full", [(1, 4, 4), (3, 2, 6)])
def test_accumulation_matches_large_batch(tiny_config, tmp_path, micro, accumulation, full):
    common = dict(synthetic_train_size=10, epochs=1, stage1_epochs=0, router_noise=0.0, moe_loss_weight=0.0)
    runs = []
    for batch, accumulate in ((micro, accumulation), (full, 1)):
        torch.manual_seed(0)
        trainer = build_trainer(tiny_config(batch_size=batch, accumulation_steps=accumulate,
                                            checkpoint_dir=str(tmp_path / f"batch{batch}"), **common))
        runs.append(capture_updates(trainer))
        trainer.fit()
    small, large = runs
    assert len(small) == len(large) == math.ceil(10 / full)  # last window is partial (2 or 4 samples)
    for update_small, update_large in zip(small, large):
        assert update_small.keys() == update_large.keys()
        for name in update_small:
            assert torch.allclose(update_small[name], update_large[name], rtol=1e-3, atol=1e-5), name


def test_window_plan_partial_window():
    windows = WindowPlan(num_samples=10, batch_size=3, accumulation=2)  # micro-batches 3,3,3,1
    assert windows.num_windows == 2
    assert [windows.samples_in_window(i) for i in range(4)] == [6, 6, 4, 4]
    assert [windows.is_window_end(i) for i in range(4)] == [False, True, False, True]


class CountUpdates(Callback):
    name = "count_updates"

    def __init__(self):
        self.steps = []

    def on_optimizer_step(self, trainer, step):
        self.steps.append(step.step)


def test_ema_and_callbacks_act_once_per_optimizer_step(tiny_config):
    config = tiny_config(batch_size=2, accumulation_steps=3, epochs=2, use_ema=True, ema_decay=0.5)
    trainer = build_trainer(config)
    counter = CountUpdates()
    trainer.add_callback(counter)
    ema = next(callback.ema for callback in trainer.callbacks if isinstance(callback, WeightEMACallback))
    updates = []
    original_update = ema.update
    ema.update = lambda model, step: (updates.append(step), original_update(model, step))
    trainer.fit()
    per_epoch = math.ceil(math.ceil(12 / 2) / 3)
    assert counter.steps == list(range(1, 2 * per_epoch + 1))
    assert updates == counter.steps
    assert trainer.global_step == 2 * per_epoch


def test_stage1_freezes_encoder_and_stage2_keeps_optimizer(tiny_config):
    config = tiny_config(epochs=2, stage1_epochs=1)
    trainer = build_trainer(config)
    encoder_before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    optimizer = trainer.optimizer
    trainer.config.epochs = 1
    trainer.fit()
    for key, value in trainer.model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key  # frozen: weights and norm statistics
    trainer.config.epochs = 2
    trainer.fit()
    assert trainer.optimizer is optimizer  # never re-created: AdamW moments survive unfreezing
    changed = any(not torch.equal(v, encoder_before[k]) for k, v in trainer.model.encoder.state_dict().items())
    assert changed
    scales = {"encoder": config.backbone_lr_scale, "decoder": config.decoder_lr_scale}
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(trainer.current_lr * scales[group["name"]]), group["name"]


@pytest.mark.parametrize("decoder_scale, backbone_scale", [(4.0, 1.0), (1.0, 0.25)])
def test_each_parameter_group_trains_at_its_scale_of_the_scheduled_lr(tiny_config, decoder_scale, backbone_scale):
    trainer = build_trainer(tiny_config(epochs=2, stage1_epochs=1, decoder_lr_scale=decoder_scale,
                                        backbone_lr_scale=backbone_scale))
    seen = []
    original_step = trainer.precision.step

    def spy(optimizer, apply=True):
        seen.append((trainer.stage, trainer.current_lr, {g["name"]: g["lr"] for g in optimizer.param_groups}))
        original_step(optimizer, apply)

    trainer.precision.step = spy
    trainer.fit()
    assert {stage for stage, _, _ in seen} == {1, 2}
    for stage, scheduled, group_lrs in seen:
        assert scheduled > 0
        assert group_lrs["decoder"] == pytest.approx(scheduled * decoder_scale)
        assert group_lrs["encoder"] == pytest.approx(0.0 if stage == 1 else scheduled * backbone_scale)


def test_checkpoint_loads_weights_only_and_holds_everything(tiny_config, tmp_path):
    trainer = build_trainer(tiny_config(epochs=2, use_ema=True))
    trainer.fit()
    folder = tmp_path / "ckpt"
    for name in ("last.pth", "best_model.pth", "epoch_2.pth", "config.yaml", "metrics.jsonl"):
        assert (folder / name).exists(), name
    payload = torch.load(folder / "last.pth", weights_only=True)
    for key in ("trainer", "rng", "config", "version", "world_size", "model_signature", "best_weights"):
        assert key in payload, key
    for key in ("model", "optimizer", "precision", "guard", "criterion", "plan", "progress", "callbacks"):
        assert key in payload["trainer"], key
    assert payload["trainer"]["progress"]["epoch"] == 2
    assert payload["trainer"]["callbacks"]["weight_ema"]["shadow"].keys() == payload["trainer"]["model"].keys()
    best = torch.load(folder / "best_model.pth", weights_only=True)
    assert best["best_weights"] in ("base", "ema")
