"""read_image / read_mask on real photographs in awkward formats, and bad files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data.dataset import SegmentationDataset
from data.image_io import find_unreadable, read_image, read_mask
from data.layouts import DatasetError, SamplePair, find_pairs


def _path(tree, split, folder, stem):
    matches = list((tree.root / split / folder).glob(f"{stem}.*"))
    assert len(matches) == 1
    return matches[0]


def test_every_image_is_rgb_uint8_at_its_size(cod10k_tree):
    for pair in find_pairs(cod10k_tree.root, "train", include_noncam=True):
        image = read_image(pair.image)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[:2] == cod10k_tree.expected[pair.name].shape


def test_grayscale_image_is_replicated(cod10k_tree):
    image = read_image(_path(cod10k_tree, "Train", "Image", "COD10K-CAM-4-Amphibian-67-Frog-4"))
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])


def test_rgba_image_is_composited(cod10k_tree):
    path = _path(cod10k_tree, "Train", "Image", "COD10K-CAM-3-Flying-53-Bird-3")
    bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    alpha = bgra[..., 3:].astype(np.float32) / 255.0
    expected = cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2RGB).astype(np.float32) * alpha
    assert np.abs(read_image(path).astype(np.float32) - expected).max() <= 1.0


def test_16bit_png_image_is_scaled(cod10k_tree):
    path = _path(cod10k_tree, "Train", "Image", "COD10K-CAM-1-Aquatic-3-Crab-5")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    expected = cv2.cvtColor((raw // 257).astype(np.uint8), cv2.COLOR_BGR2RGB)
    assert np.array_equal(read_image(path), expected)


def test_masks_are_binarised(cod10k_tree):
    for pair in find_pairs(cod10k_tree.root, "train", include_noncam=True):
        mask = read_mask(pair.mask)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        if pair.name != "COD10K-CAM-2-Terrestrial-23-Cat-2":  # the half-size mask
            assert np.array_equal(mask, cod10k_tree.expected[pair.name]), pair.name


def test_zero_one_label_png(tmp_path):
    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:15] = 1
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    assert np.array_equal(read_mask(tmp_path / "labels.png"), labels)


def test_colour_mask_is_converted_to_gray(tmp_path):
    mask = np.zeros((20, 30, 3), np.uint8)
    mask[2:8, 3:9] = 255
    mask[10:15, 10:20] = (0, 0, 90)  # dark red annotation noise stays background
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    assert read_mask(tmp_path / "m.png").sum() == 36


def test_mask_of_another_size_is_resized_and_counted(cod10k_tree):
    pairs = find_pairs(cod10k_tree.root, "train")
    dataset = SegmentationDataset(pairs)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["mask"].shape[1:] == sample["image"].shape[1:]
        assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
        expected = cod10k_tree.expected[sample["name"]]
        assert np.array_equal(sample["mask"][0].numpy().astype(np.uint8), expected)
    dataset[0]  # re-reading does not count twice
    assert dataset.resized_masks == 1


def test_non_ascii_path(tmp_path, cod10k_tree):
    source = _path(cod10k_tree, "Train", "Image", "COD10K-CAM-1-Aquatic-1-BatFish-1")
    target = tmp_path / "Ünïcødé 图像.jpg"
    target.write_bytes(source.read_bytes())
    assert np.array_equal(read_image(target), read_image(source))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_names_file_and_fix(tmp_path, cod10k_tree, suffix):
    stem = "COD10K-CAM-1-Aquatic-1-BatFish-1"
    source = _path(cod10k_tree, "Train", "Image", stem)
    image = read_image(source)
    full = tmp_path / f"full{suffix}"
    cv2.imwrite(str(full), image)
    broken = tmp_path / f"{stem}{suffix}"
    broken.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    with pytest.raises(DatasetError) as excinfo:
        read_image(broken)
    message = str(excinfo.value)
    # the reader names no flag: which one skips such files depends on the command (train adds it)
    assert "\n" not in message and str(broken) in message and "Re-download or delete" in message
    assert "truncated" in message and "--skip" not in message
    bad = find_unreadable([SamplePair(full, full, "ok"), SamplePair(broken, full, "bad")])
    assert [pair.name for pair, _ in bad] == ["bad"]


@pytest.mark.parametrize(("name", "content"), [("empty.jpg", b""), ("text.png", b"hello, not a picture")])
def test_unreadable_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    for reader in (read_image, read_mask):
        with pytest.raises(DatasetError, match="Re-download or delete the file"):
            reader(path)
    with pytest.raises(DatasetError, match="--skip-bad-samples"):  # training advises its flag
        SegmentationDataset([SamplePair(path, path, "bad")])[0]


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
