"""The Python API (``engine.api``) and torch.hub entry point, on the session's tiny run (the README's
snippet: tests/docs/test_readme_snippets.py).

Oracles: a forward pass written out here (cv2 resize, normalisation, model, sigmoid, bilinear resize)
for ``predict``; ``predict`` image by image for ``predict_batch``.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_run_dir):
    return tiny_run_dir / "best_model.pth"


def photos():
    generator = np.random.default_rng(3)
    return [generator.integers(0, 256, shape, dtype=np.uint8) for shape in ((45, 71, 3), (90, 33, 3), (48, 48, 3))]


def independent_probability(module, image, side, mean, std):
    resized = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    normalised = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    batch = torch.from_numpy(normalised.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        probability = torch.sigmoid(module(batch).logits)
    return F.interpolate(probability, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()


def test_predict_is_the_documented_forward_pass(checkpoint):
    from engine.api import load_model

    model = load_model(checkpoint, weights="ema", device="cpu")
    assert model.weights == "ema" and model.device == torch.device("cpu") and model.img_size == 48
    mean, std = model.module.encoder.normalization
    for image in photos():
        probability = model.predict(image)
        assert probability.shape == image.shape[:2] and probability.dtype == np.float32
        assert 0 <= probability.min() and probability.max() <= 1
        expected = independent_probability(model.module, image, 48, mean, std)
        assert np.abs(probability - expected).max() < 1e-5


def test_predict_batch_equals_predict_image_by_image(checkpoint):
    from engine.api import load_model

    model = load_model(checkpoint, weights="base", device=torch.device("cpu"))
    images = photos()
    batched = model.predict_batch(images, batch_size=2)  # batches of 2 and 1
    assert [probability.shape for probability in batched] == [image.shape[:2] for image in images]
    for image, probability in zip(images, batched):
        assert np.abs(probability - model.predict(image)).max() < 1e-5


def test_weights_and_bad_images_are_clear_errors(checkpoint):
    from engine.api import load_model

    best = load_model(checkpoint, device="cpu")  # "best": what the checkpoint recorded as best
    stored = torch.load(checkpoint, weights_only=True).get("best_weights", "base")
    assert best.weights == stored
    with pytest.raises(ValueError, match="uint8"):
        best.predict(np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="weights must be one of"):
        load_model(checkpoint, weights="both")


def test_logits_module_traces_and_matches_the_model(checkpoint):
    from engine.api import load_model

    model = load_model(checkpoint, weights="base", device="cpu")
    wrapper = model.logits_module()
    traced = torch.jit.trace(wrapper, torch.rand(2, 3, 40, 56))
    images = torch.rand(1, 3, 63, 30)
    with torch.no_grad():
        assert torch.allclose(traced(images), wrapper(images), atol=1e-6)
        assert traced(images).shape == (1, 1, 63, 30)


def test_torch_hub_load_from_the_local_repo(checkpoint):
    hub_model = torch.hub.load(str(ROOT), "camo_segmenter", checkpoint=str(checkpoint), weights="ema",
                               device="cpu", source="local")
    from engine.api import load_model

    image = photos()[0]
    assert np.array_equal(hub_model.predict(image), load_model(checkpoint, "ema", "cpu").predict(image))
