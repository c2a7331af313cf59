"""Which encoder levels the decoder uses: stride >= ``min_feature_stride`` for the FPN and experts, the
level just finer for the detail refinement (default 8 and stride 4; the mechanism tested at 4 and stride 2)."""
from __future__ import annotations

import pytest
import torch

from models import ModelConfig, build_model

BACKBONES_WITH_STRIDE_2 = ["test_efficientnet", "tf_efficientnet_lite0", "resnet18"]


def _model(backbone: str, **overrides):
    settings = dict(backbone=backbone, num_experts=3, decoder_channels=16, min_feature_stride=4, pretrained=False)
    settings.update(overrides)
    torch.manual_seed(0)
    return build_model(ModelConfig(**settings))


def test_by_default_the_context_levels_start_at_stride_8_and_the_stride_4_level_feeds_the_detail_refinement():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tf_efficientnet_lite0", pretrained=False))
    reductions = model.encoder.reductions
    assert [reductions[i] for i in model.decoder.context_levels] == [8, 16, 32]
    assert reductions[model.decoder.detail_level] == 4
    assert model.decoder.fusion.lateral[0].out_channels == 160
    output = model.eval()(torch.randn(1, 3, 96, 96))
    assert output.logits.shape == (1, 1, 96, 96)


@pytest.mark.parametrize("backbone", BACKBONES_WITH_STRIDE_2)
def test_context_levels_start_at_stride_4_and_the_stride_2_level_feeds_the_detail_refinement(backbone):
    model = _model(backbone)
    reductions = model.encoder.reductions
    assert reductions[0] == 2
    assert [reductions[i] for i in model.decoder.context_levels] == [r for r in reductions if r >= 4]
    assert reductions[model.decoder.detail_level] == 2
    assert len(model.decoder.fusion.lateral) == len(model.decoder.context_levels)
    assert model.decoder.fusion.lateral[0].in_channels == model.encoder.out_channels[model.decoder.context_levels[0]]


@pytest.mark.parametrize("backbone", BACKBONES_WITH_STRIDE_2)
def test_the_detail_refinement_starts_as_the_upsampled_coarse_prediction_and_learns_from_stride_2(backbone):
    model = _model(backbone).train()
    images = torch.randn(2, 3, 64, 64)
    decoded = model.decoder(model.encoder(images))
    assert decoded.features.shape[-2:] == (16, 16) and decoded.detail.shape[-2:] == (32, 32)
    head = model.head
    coarse = head.classifier(head.refine(decoded.features))
    upsampled = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(decoded.features, decoded.detail), upsampled)  # zero-initialised correction
    model(images).logits.square().mean().backward()
    assert head.detail.correction.weight.grad.abs().sum() > 0  # so the correction leaves zero at step 1
    with torch.no_grad():
        head.detail.correction.weight.normal_()  # as after some training
        changed = decoded.detail + 1.0  # only the stride-2 encoder map differs
        assert not torch.allclose(head(decoded.features, decoded.detail), head(decoded.features, changed))


def test_without_detail_the_decoder_output_stays_at_stride_4():
    model = _model("test_efficientnet", detail_channels=0)
    assert model.head.detail is None and model.decoder.detail_level is None
    assert model.decoder(model.encoder(torch.randn(1, 3, 64, 64))).detail is None


def test_min_feature_stride_1_fuses_every_level_and_leaves_nothing_for_detail():
    model = _model("test_efficientnet", min_feature_stride=1)
    assert model.decoder.context_levels == list(range(len(model.encoder.reductions)))
    assert model.head.detail is None


def test_backbones_without_a_stride_2_level_have_no_detail_refinement():
    model = _model("test_convnext")
    assert min(model.encoder.reductions) == 4 and model.head.detail is None
    assert model.decoder.context_levels == list(range(len(model.encoder.reductions)))


def test_an_encoder_too_shallow_for_the_stride_keeps_its_deepest_level():
    model = _model("test_convnext", min_feature_stride=1024)  # no level that coarse: keep the deepest
    assert model.decoder.context_levels == [len(model.encoder.reductions) - 1]
    output = model(torch.randn(1, 3, 64, 64))
    assert output.logits.shape == (1, 1, 64, 64)
