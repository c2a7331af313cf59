"""Defaults for fine-tuning a pretrained encoder: frozen BatchNorm statistics, per-group LR scales,
the routing default that follows --num-experts, and older checkpoints keeping their own values."""
import pytest
import torch
from torch import nn

from engine.build import build_trainer
from engine.checkpoint.format import LEGACY_VALUES
from engine.config import TrainConfig, build_config
from engine.training.modes import evaluating
from engine.training.run_config import resolve_run_config
from engine.training.unfreeze import freeze_batch_norm_statistics

BN_BACKBONE = dict(backbone="test_efficientnet")  # timm's tiny EfficientNet: BatchNorm throughout


def batch_norm_layers(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def statistics(module):
    return {name: buffer.clone() for name, buffer in module.named_buffers() if "running" in name}


@pytest.mark.parametrize("frozen", [True, False])
def test_stage2_keeps_encoder_batch_norm_statistics_only_when_frozen(tiny_config, frozen):
    trainer = build_trainer(tiny_config(epochs=1, stage1_epochs=0, freeze_encoder_bn=frozen, **BN_BACKBONE))
    encoder = trainer.model.encoder
    assert batch_norm_layers(encoder), "the test needs an encoder with BatchNorm"
    before_stats = statistics(encoder)
    before_affine = {n: p.clone() for n, p in encoder.named_parameters() if "bn" in n}
    trainer.fit()
    after_stats = statistics(encoder)
    unchanged = [torch.equal(before_stats[name], after_stats[name]) for name in before_stats]
    assert all(unchanged) if frozen else not any(unchanged[:2])
    # Frozen statistics, trained weights: the BatchNorm affine parameters still learn.
    assert any(not torch.equal(before_affine[n], p) for n, p in encoder.named_parameters() if "bn" in n)


def test_frozen_batch_norm_survives_validation_mid_run(tiny_config):
    trainer = build_trainer(tiny_config(epochs=1, stage1_epochs=0, freeze_encoder_bn=True, **BN_BACKBONE))
    from engine.training.unfreeze import apply_unfreezing

    apply_unfreezing(trainer.unwrapped_model, trainer.plan, 0)
    trainer.validate(trainer.model)
    assert trainer.unwrapped_model.decoder.training  # the rest trains again after validation
    assert not any(layer.training for layer in batch_norm_layers(trainer.unwrapped_model.encoder))


def test_evaluating_gives_every_submodule_its_own_mode_back():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.Dropout(), nn.BatchNorm2d(4)))
    model.train()
    freeze_batch_norm_statistics(model)
    modes = [m.training for m in model.modules()]
    with evaluating(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == modes == [True, True, False, True, True, False]
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("a failing validation")
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("values, frozen", [
    ({}, False),  # synthetic scenes: the encoder starts from random weights
    ({"dataset_path": "data/cod10k"}, True),  # real data: pretrained by default
    ({"dataset_path": "data/cod10k", "pretrained": False}, False),
    ({"pretrained": True}, True),
    ({"dataset_path": "data/cod10k", "freeze_encoder_bn": False}, False),
    ({"freeze_encoder_bn": True}, True),
])
def test_batch_norm_is_frozen_by_default_only_for_a_pretrained_encoder(values, frozen):
    assert TrainConfig(**values).freeze_encoder_bn is frozen


@pytest.mark.parametrize("num_experts, top_k", [(7, 3), (3, 3), (2, 2), (1, 1)])
def test_default_top_k_follows_the_expert_count(num_experts, top_k):
    config = build_config({}, {"num_experts": num_experts})
    assert config.top_k == top_k
    assert config.model_config(synthetic=True).top_k == top_k
    assert build_config({}, {"num_experts": num_experts, "top_k": 1}).top_k == 1


def test_a_checkpoint_from_before_these_settings_resumes_with_the_values_it_trained_with(tiny_config, tmp_path):
    config = tiny_config(epochs=2, stop_after_epochs=1, decoder_lr_scale=1.0, freeze_encoder_bn=False)
    build_trainer(config).fit()
    last = tmp_path / "ckpt" / "last.pth"
    payload = torch.load(last, weights_only=True)
    for key in LEGACY_VALUES:
        del payload["config"][key]  # as written by the version before these settings existed
    torch.save(payload, last)
    resumed, notes = resolve_run_config({}, {"resume_from": str(last), "checkpoint_dir": str(tmp_path / "ckpt")})
    assert {key: getattr(resumed, key) for key in LEGACY_VALUES} == LEGACY_VALUES
    assert notes[-1] == "changed on this invocation: nothing"
    trainer = build_trainer(resumed)
    assert trainer.plan.group_lr_scales(2)["decoder"] == 1.0
