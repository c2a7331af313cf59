"""Gaps found on real CAMO files: colour and palette masks, all-empty datasets, swapped mask sides."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from data.dataset import SegmentationDataset
from data.image_io import find_unreadable, masks_all_empty, read_mask, swapped_sides_problem
from data.layouts import DatasetError, SamplePair, find_pairs
from tests.data.conftest import ellipse_mask, jpeg_like_noise, photo, save_rgb


def _labels(height: int = 60, width: int = 80) -> np.ndarray:
    """0 background, 1 an ellipse, 2 a rectangle: (H, W) uint8."""
    labels = ellipse_mask(height, width, 7)
    labels[40:55, 60:75] = 2
    return labels


def test_voc_palette_png_nonzero_indices_are_object(tmp_path):
    labels = _labels()
    image = Image.fromarray(labels, mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 0, 60])  # VOC's index 1, and a dark blue under any gray threshold
    image.save(tmp_path / "voc.png")
    assert (tmp_path / "voc.png").read_bytes()[25] == 3  # a real indexed PNG
    gray = cv2.cvtColor(cv2.imread(str(tmp_path / "voc.png")), cv2.COLOR_BGR2GRAY)
    assert not (gray > 127).any()  # what a gray conversion made of it: an empty mask
    assert np.array_equal(read_mask(tmp_path / "voc.png"), (labels > 0).astype(np.uint8))


def test_palette_png_without_palette_entries_for_its_labels(tmp_path):
    labels = _labels()
    Image.fromarray(labels, mode="P").save(tmp_path / "labels.png")  # Pillow writes a one-entry palette
    assert np.array_equal(read_mask(tmp_path / "labels.png"), (labels > 0).astype(np.uint8))


def test_gray_palette_png_reads_like_the_gray_mask(tmp_path):
    mask = ellipse_mask(60, 80, 3)
    Image.fromarray(jpeg_like_noise(mask, 3)).convert("P").save(tmp_path / "gray_indexed.png")
    assert (tmp_path / "gray_indexed.png").read_bytes()[25] == 3
    assert np.array_equal(read_mask(tmp_path / "gray_indexed.png"), mask)  # the noise stays background


@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 255), (0, 255, 0)], ids=["red", "blue", "green"])
@pytest.mark.parametrize("alpha", [False, True], ids=["rgb", "rgba"])
def test_pure_colour_objects_on_black(tmp_path, colour, alpha):
    mask = ellipse_mask(60, 80, 5)
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[mask > 0] = colour
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "m.png"), np.dstack([bgr, np.full((60, 80), 255, np.uint8)]) if alpha else bgr)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


def test_noisy_colour_mask_keeps_the_127_threshold(tmp_path):
    mask = ellipse_mask(60, 80, 6)
    noise = jpeg_like_noise(np.zeros_like(mask), 6)  # 0-59 in every channel
    rgb = np.dstack([np.maximum(jpeg_like_noise(mask, 1), noise), noise, noise])
    cv2.imwrite(str(tmp_path / "m.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


def test_masks_all_empty_reads_only_until_the_first_object(cod10k_tree, tmp_path):
    pairs = find_pairs(cod10k_tree.root, "train", include_noncam=True)  # CAM names sort before NonCAM
    missing = SamplePair(tmp_path / "gone.jpg", tmp_path / "gone.png", "gone")
    assert not masks_all_empty(pairs[:1] + [missing])  # stopped before the missing file
    noncam = [pair for pair in pairs if "NonCAM" in pair.name]
    assert masks_all_empty(noncam) and not masks_all_empty(pairs)


@pytest.mark.parametrize(("mask_shape", "swapped"), [
    ((400, 300), True),  # exact swap
    ((200, 150), True),  # swapped and at half size
    ((150, 200), False),  # plain half size
    ((301, 401), False),  # off by one pixel
])
def test_swapped_sides_problem(mask_shape, swapped):
    problem = swapped_sides_problem((300, 400, 3), mask_shape)
    assert (problem is not None) == swapped
    if swapped:
        assert f"the mask is {mask_shape[1]}x{mask_shape[0]} but its image is 400x300" in problem
    assert swapped_sides_problem((300, 300, 3), (300, 300)) is None


def _pair(tmp_path, mask_height: int, mask_width: int) -> SamplePair:
    save_rgb(tmp_path / "cat.jpg", photo("chelsea", 120, 180))
    cv2.imwrite(str(tmp_path / "cat.png"), ellipse_mask(mask_height, mask_width, 2) * 255)
    return SamplePair(tmp_path / "cat.jpg", tmp_path / "cat.png", "cat")


def test_swapped_mask_is_a_bad_sample(tmp_path):
    pair = _pair(tmp_path, 180, 120)
    with pytest.raises(DatasetError) as excinfo:
        SegmentationDataset([pair]).load_arrays(0)
    message = str(excinfo.value)
    assert "\n" not in message and str(pair.mask) in message and "--skip-bad-samples" in message
    assert "the mask is 120x180 but its image is 180x120" in message
    bad = find_unreadable([pair])  # found before training, from the files' headers
    assert [found.name for found, _ in bad] == ["cat"]
    assert bad[0][1].startswith(f"{pair.mask}: the mask is 120x180") and "swapped" in bad[0][1]


def test_rescaled_mask_is_still_resized(tmp_path):
    pair = _pair(tmp_path, 60, 90)
    image, mask = SegmentationDataset([pair]).load_arrays(0)
    assert mask.shape == image.shape[:2] == (120, 180) and find_unreadable([pair]) == []
