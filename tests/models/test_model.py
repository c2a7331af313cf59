"""CamoSegmenter end to end: shapes, gradients to every expert and the router, no BatchNorm."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.training.losses import structure_loss
from models import CamoSegmenter, ModelConfig, SegmentationOutput, build_model

BACKBONES = ["test_convnext", "edgenext_xx_small"]
NUM_EXPERTS = 7


def _config(backbone: str, **overrides) -> ModelConfig:
    settings = dict(backbone=backbone, num_experts=NUM_EXPERTS, top_k=2, decoder_channels=16, pretrained=False)
    settings.update(overrides)
    return ModelConfig(**settings)


def _mask(batch: int, height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(batch, 1, height, width)
    mask[..., height // 4: 3 * height // 4, width // 3: 2 * width // 3] = 1.0
    return mask


@pytest.fixture(scope="module", params=BACKBONES)
def model(request) -> CamoSegmenter:
    torch.manual_seed(0)
    return build_model(_config(request.param))


@pytest.mark.parametrize("batch, size", [(1, (72, 100)), (2, (64, 64)), (2, (72, 100))])
def test_forward_shapes_and_backward(model, batch, size):
    # 72 x 100 is not a multiple of the deepest stride (32).
    model.train().zero_grad()
    images = torch.randn(batch, 3, *size)
    output = model(images)
    assert isinstance(output, SegmentationOutput)
    assert output.logits.shape == (batch, 1, *size)
    assert output.routing_weights.shape == (batch, NUM_EXPERTS)
    assert output.expert_fractions.shape == (NUM_EXPERTS,)
    assert output.balance_loss.shape == ()
    assert output.expert_logits == []
    # One side output per context level, at that level's own resolution.
    features = model.encoder(images)
    level_sizes = [tuple(features[i].shape[-2:]) for i in model.decoder.context_levels]
    assert [tuple(side.shape) for side in output.side_logits] == [(batch, 1, *hw) for hw in level_sizes]
    (structure_loss(output.logits, _mask(batch, *size)) + output.balance_loss).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_expert_and_the_router_get_gradient_when_all_are_selected(backbone):
    # top_k = num_experts selects every expert for every image, so each must learn from the loss;
    # the router's gradient here comes through the combine weights (the balance loss is flat when
    # every expert is always dispatched).
    torch.manual_seed(0)
    model = build_model(_config(backbone, top_k=NUM_EXPERTS, router_noise=0.0)).train()
    output = model(torch.randn(2, 3, 64, 64))
    (structure_loss(output.logits, _mask(2, 64, 64)) + output.balance_loss).backward()
    for index, expert in enumerate(model.decoder.experts):
        for name, param in expert.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, f"expert {index} ({expert.kind}).{name}"
    for name, param in model.decoder.router.named_parameters():
        assert param.grad.abs().sum() > 0, f"router.{name}"


def test_experts_outside_the_top_k_get_exactly_zero_gradient():
    torch.manual_seed(0)
    model = build_model(_config("test_convnext", top_k=2, router_noise=0.0)).train()
    output = model(torch.randn(1, 3, 64, 64))
    structure_loss(output.logits, _mask(1, 64, 64)).backward()
    selected = (output.routing_weights[0] > 0).tolist()
    assert sum(selected) == 2
    for expert, is_selected in zip(model.decoder.experts, selected):
        gradient = sum(p.grad.abs().sum() for p in expert.parameters())
        assert (gradient > 0) == is_selected
    assert model.decoder.router.gate.weight.grad.abs().sum() > 0


def test_balance_loss_gives_router_gradient_at_batch_one(model):
    model.train().zero_grad()
    output = model(torch.randn(1, 3, 64, 64))
    output.balance_loss.backward()
    assert model.decoder.router.gate.weight.grad.abs().sum() > 0


def test_no_batchnorm_in_decoder_or_head(model):
    for part in (model.decoder, model.head):
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in part.modules())


def test_eval_is_deterministic_and_leaves_fractions_alone(model):
    model.eval()
    fractions = model.decoder.router.dispatch_fraction.clone()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first, second = model(images), model(images)
    torch.testing.assert_close(first.logits, second.logits)
    assert torch.equal(model.decoder.router.dispatch_fraction, fractions)


def test_deep_supervision_returns_one_logit_map_per_expert():
    model = build_model(_config("test_convnext", deep_supervision=True)).train()
    output = model(torch.randn(2, 3, 72, 100))
    assert len(output.expert_logits) == NUM_EXPERTS
    assert all(logits.shape == (2, 1, 72, 100) for logits in output.expert_logits)
    sum(structure_loss(logits, _mask(2, 72, 100)) for logits in output.expert_logits).backward()
    assert model.decoder.expert_head.weight.grad.abs().sum() > 0


def test_forward_has_no_host_sync():
    # Meta tensors hold no data, so any .item()/.tolist()/data-dependent shape in forward raises.
    with torch.device("meta"):
        model = build_model(_config("test_convnext"))
    output = model.train()(torch.empty(2, 3, 64, 64, device="meta"))
    assert output.logits.shape == (2, 1, 64, 64)


@pytest.mark.parametrize(
    "overrides", [{"top_k": 8}, {"top_k": 0}, {"num_experts": 0}, {"balance_momentum": 1.0}, {"router_noise": -1.0}]
)
def test_build_model_rejects_bad_settings(overrides):
    with pytest.raises(ValueError):
        build_model(_config("test_convnext", **overrides))
