"""TimmEncoder: feature levels, normalisation, stage groups, name errors and offline weights."""
from __future__ import annotations

import timm
import torch
import pytest
from timm.data import resolve_model_data_config

import models.encoder as encoder_module
from models import PretrainedWeightsError, TimmEncoder, UnknownBackboneError

# test_mambaout: a family whose timm features come channels-last, (B, H, W, C)
BACKBONES = ["test_convnext", "test_efficientnet", "edgenext_xx_small", "resnet18", "edgenext_base", "test_mambaout"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_features_match_feature_info(backbone):
    encoder = TimmEncoder(backbone, pretrained=False).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 96))  # not square: a swapped H and W shows
    assert len(features) == len(encoder.out_channels) == len(encoder.reductions)
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions):
        assert feature.shape == (1, channels, 64 // reduction, 96 // reduction)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_stages_partition_every_parameter_once(backbone):
    encoder = TimmEncoder(backbone, pretrained=False)
    stages = encoder.stages()
    assert len(stages) == len(encoder.out_channels)
    assert all(stage for stage in stages)
    grouped = [id(p) for stage in stages for module in stage for p in module.parameters()]
    assert len(grouped) == len(set(grouped)), "a parameter is in two stage groups"
    assert set(grouped) == {id(p) for p in encoder.parameters()}


def test_a_channels_last_family_trains_end_to_end():
    from models import ModelConfig, build_model

    model = build_model(ModelConfig(backbone="test_mambaout", pretrained=False, num_experts=3, top_k=2,
                                    decoder_channels=16))
    logits = model(torch.rand(2, 3, 64, 96)).logits
    assert logits.shape == (2, 1, 64, 96)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)


def test_stages_freeze_deepest_first():
    encoder = TimmEncoder("test_convnext", pretrained=False)
    encoder.requires_grad_(False)
    for module in encoder.stages()[-1]:
        module.requires_grad_(True)
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("model.stages_3.") for name in trainable)


def test_normalization_comes_from_timm_pretrained_config():
    encoder = TimmEncoder("test_convnext", pretrained=False)
    config = resolve_model_data_config(encoder.model)
    assert encoder.normalization == (tuple(config["mean"]), tuple(config["std"]))
    assert encoder.normalization == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UnknownBackboneError) as info:
        TimmEncoder("edgenext_bsae", pretrained=False)
    message = str(info.value)
    assert "edgenext_base" in message and "timm.list_models()" in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_download_failure_names_both_ways_out(monkeypatch):
    real_create = timm.create_model

    def offline_create(name, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("Name or service not known\nretrying...")
        return real_create(name, **kwargs)

    monkeypatch.setattr(encoder_module.timm, "create_model", offline_create)
    with pytest.raises(PretrainedWeightsError) as info:
        TimmEncoder("test_convnext", pretrained=True)
    message = str(info.value)
    assert "--pretrained-path FILE" in message and "--no-pretrained" in message
    assert "\n" not in message
    assert isinstance(info.value, RuntimeError)
    # The offline route does not touch the network.
    TimmEncoder("test_convnext", pretrained=False)


def _assert_same_state(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_pretrained_path_round_trip_features_state_dict(tmp_path):
    torch.manual_seed(1)
    source = TimmEncoder("test_convnext", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "encoder.pth")
    torch.manual_seed(2)
    loaded = TimmEncoder("test_convnext", pretrained=True, pretrained_path=str(tmp_path / "encoder.pth"))
    _assert_same_state(source.state_dict(), loaded.state_dict())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_path_full_timm_model_matches_timm_loader(tmp_path, suffix):
    torch.manual_seed(3)
    full = timm.create_model("test_convnext", pretrained=False)
    path = tmp_path / f"full{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(full.state_dict(), str(path))
    else:
        torch.save(full.state_dict(), path)
    # Oracle: timm's own loader reads the full-model file, then builds the features model.
    oracle = timm.create_model(
        "test_convnext", features_only=True, pretrained=True, pretrained_cfg_overlay={"file": str(path)}
    )
    loaded = TimmEncoder("test_convnext", pretrained_path=str(path))
    _assert_same_state(oracle.state_dict(), loaded.model.state_dict())


def test_pretrained_path_accepts_nested_segmenter_checkpoint(tmp_path):
    from models import ModelConfig, build_model

    model = build_model(ModelConfig(backbone="test_convnext", pretrained=False, decoder_channels=8))
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    loaded = TimmEncoder("test_convnext", pretrained_path=str(tmp_path / "checkpoint.pth"))
    _assert_same_state(model.encoder.state_dict(), loaded.state_dict())


def test_pretrained_path_of_another_model_is_refused(tmp_path):
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(PretrainedWeightsError, match="no tensor .* matches backbone 'test_convnext'"):
        TimmEncoder("test_convnext", pretrained_path=str(tmp_path / "resnet.pth"))


def test_missing_or_corrupt_pretrained_path(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="not found.*--no-pretrained"):
        TimmEncoder("test_convnext", pretrained_path=str(tmp_path / "missing.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="could not read"):
        TimmEncoder("test_convnext", pretrained_path=str(tmp_path / "garbage.pth"))

