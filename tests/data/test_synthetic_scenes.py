"""Synthetic camouflage scenes: determinism, mask statistics, hardness baselines, disk layout."""

from __future__ import annotations


import numpy as np
import pytest

from data.image_io import read_image, read_mask
from data.layouts import find_pairs
from data.synthetic import render_scene, write_synthetic_dataset

NUM_SCENES = 200


@pytest.fixture(scope="module")
def scenes() -> tuple[np.ndarray, np.ndarray]:
    """200 scenes at 128 px: images (N, H, W, 3) uint8 and masks (N, H, W) bool."""
    rendered = [render_scene(123, index, 128) for index in range(NUM_SCENES)]
    images = np.stack([image for image, _ in rendered])
    masks = np.stack([mask for _, mask in rendered]) > 127
    return images, masks


def _mean_iou(predictions: np.ndarray, masks: np.ndarray) -> float:
    intersection = (predictions & masks).sum(axis=(1, 2))
    union = (predictions | masks).sum(axis=(1, 2))
    return float(np.mean(intersection / np.maximum(union, 1)))


def test_same_seed_and_index_give_identical_arrays():
    image, mask = render_scene(5, 17)
    again_image, again_mask = render_scene(5, 17)
    assert np.array_equal(image, again_image) and np.array_equal(mask, again_mask)
    other_image, _ = render_scene(5, 18)
    other_seed, _ = render_scene(6, 17)
    assert not np.array_equal(image, other_image) and not np.array_equal(image, other_seed)


def test_output_format_and_mask_area(scenes):
    images, masks = scenes
    image, mask = render_scene(0, 0, size=96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    areas = masks.mean(axis=(1, 2))
    assert areas.min() >= 0.10 and areas.max() <= 0.40
    assert images.std() > 10  # not blank


def test_mean_mask_predictor_is_weak(scenes):
    """The best threshold of the dataset's mean mask, chosen on the same scenes (optimistic)."""
    _, masks = scenes
    mean_mask = masks.mean(axis=0)
    best = max(
        _mean_iou(np.broadcast_to(mean_mask >= threshold, masks.shape), masks)
        for threshold in np.linspace(0.02, 0.98, 49)
    )
    assert best <= 0.3


def test_best_global_brightness_threshold_is_weak(scenes):
    images, masks = scenes
    brightness = images.astype(np.float32).mean(axis=3)
    best = 0.0
    for threshold in np.linspace(0, 255, 52):
        best = max(best, _mean_iou(brightness > threshold, masks), _mean_iou(brightness < threshold, masks))
    assert best <= 0.3


def test_write_then_find_pairs(tmp_path):
    counts = write_synthetic_dataset(tmp_path / "synth", num_train=5, num_test=3, seed=4, size=64)
    assert counts == {"train": 5, "test": 3}
    train = find_pairs(tmp_path / "synth", "train")
    test = find_pairs(tmp_path / "synth", "test")
    assert len(train) == 5 and len(test) == 3
    assert {pair.name for pair in train}.isdisjoint(pair.name for pair in test)
    assert all(pair.name.startswith("COD10K-CAM-Synthetic-") for pair in train + test)
    assert all(pair.image.suffix == ".jpg" and pair.mask.suffix == ".png" for pair in train)
    image, mask = read_image(train[0].image), read_mask(train[0].mask)
    expected_image, expected_mask = render_scene(4, 0, 64)
    assert image.shape == (64, 64, 3) and np.array_equal(mask, expected_mask // 255)
    assert np.abs(image.astype(int) - expected_image).mean() < 4  # JPEG quality 95
    train_images = {read_image(pair.image).tobytes() for pair in train}
    assert not any(read_image(pair.image).tobytes() in train_images for pair in test)
