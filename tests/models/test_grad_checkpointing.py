"""Gradient checkpointing and channels-last change memory/layout, never the gradients."""
import pytest
import torch

from engine.training.losses import SegmentationCriterion
from models import ModelConfig, build_model


def gradients(model, images, masks, seed=0):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    SegmentationCriterion()(model(images), masks)["loss"].backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", ["test_convnext", "edgenext_xx_small"])
def test_grad_checkpointing_gives_the_same_gradients(backbone):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, num_experts=3, decoder_channels=16, pretrained=False))
    model.train()
    images, masks = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    plain = gradients(model, images, masks)
    model.decoder.router.dispatch_fraction.fill_(1 / 3)  # forward updated the dispatch EMA: reset it
    model.set_grad_checkpointing(True)
    checkpointed = gradients(model, images, masks)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6), name


def test_channels_last_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="test_convnext", num_experts=3, decoder_channels=16, pretrained=False))
    images, masks = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    plain = gradients(model, images, masks)
    model.decoder.router.dispatch_fraction.fill_(1 / 3)
    model = model.to(memory_format=torch.channels_last)
    last = gradients(model, images.to(memory_format=torch.channels_last), masks)
    for name in plain:
        assert torch.allclose(plain[name], last[name], rtol=1e-4, atol=1e-5), name
