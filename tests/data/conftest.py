"""Fixtures for the data tests: a COD10K-v3 tree and test packs built from real skimage photos."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network checks in tests

# Run from any working directory: the repository root must win over tests/data for `import data`.
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from skimage import data as skdata  # noqa: E402

TRAIN_CAM = [
    "COD10K-CAM-1-Aquatic-1-BatFish-1",
    "COD10K-CAM-1-Aquatic-3-Crab-5",
    "COD10K-CAM-2-Terrestrial-23-Cat-2",
    "COD10K-CAM-3-Flying-53-Bird-3",
    "COD10K-CAM-4-Amphibian-67-Frog-4",
]
TRAIN_NONCAM = ["COD10K-NonCAM-5-Background-1-Sky-3", "COD10K-NonCAM-5-Background-2-Grass-4"]
TEST_CAM = ["COD10K-CAM-1-Aquatic-2-Fish-7", "COD10K-CAM-2-Terrestrial-40-Owl-9"]
TEST_NONCAM = ["COD10K-NonCAM-1-Aquatic-4-Sea-12"]


def photo(name: str, height: int, width: int) -> np.ndarray:
    """A real skimage photograph resized to an odd size: (H, W, 3) RGB or (H, W) gray uint8."""
    return cv2.resize(getattr(skdata, name)(), (width, height), interpolation=cv2.INTER_AREA)


def ellipse_mask(height: int, width: int, seed: int) -> np.ndarray:
    """A hand-made object mask, (H, W) uint8 in {0, 1}: an ellipse plus a polygon."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    centre = (int(width * rng.uniform(0.3, 0.7)), int(height * rng.uniform(0.3, 0.7)))
    cv2.ellipse(mask, centre, (width // 5, height // 4), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    points = np.array([[width // 10, height // 10], [width // 3, height // 8], [width // 5, height // 3]], np.int32)
    cv2.fillPoly(mask, [points], 1)
    return mask


def jpeg_like_noise(mask01: np.ndarray, seed: int) -> np.ndarray:
    """0/255 mask with the ringing noise of a mask that once went through JPEG."""
    rng = np.random.default_rng(seed)
    noisy = np.where(mask01 > 0, 255 - rng.integers(0, 60, mask01.shape), rng.integers(0, 60, mask01.shape))
    return noisy.astype(np.uint8)


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    array = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)


def _build_cod10k(root: Path) -> dict:
    """Write the tree; return {stem: expected binary mask at image size} and image sizes."""
    for split in ("Train", "Test"):
        (root / split / "Image").mkdir(parents=True)
        (root / split / "GT_Object").mkdir(parents=True)
    train_img, train_gt = root / "Train" / "Image", root / "Train" / "GT_Object"
    expected = {}

    stem = TRAIN_CAM[0]  # odd-sized RGB JPEG, mask 0/255 with JPEG-like noise
    save_rgb(train_img / f"{stem}.jpg", photo("astronaut", 333, 517))
    expected[stem] = ellipse_mask(333, 517, 1)
    assert cv2.imwrite(str(train_gt / f"{stem}.png"), jpeg_like_noise(expected[stem], 1))

    stem = TRAIN_CAM[1]  # 16-bit RGB PNG image
    rocket16 = photo("rocket", 199, 263).astype(np.uint16) * 257
    assert cv2.imwrite(str(train_img / f"{stem}.png"), cv2.cvtColor(rocket16, cv2.COLOR_RGB2BGR))
    expected[stem] = ellipse_mask(199, 263, 2)
    assert cv2.imwrite(str(train_gt / f"{stem}.png"), expected[stem] * 255)

    stem = TRAIN_CAM[2]  # mask stored at half the image's size
    save_rgb(train_img / f"{stem}.jpg", photo("chelsea", 300, 451))
    small = ellipse_mask(150, 225, 3)
    expected[stem] = cv2.resize(small, (451, 300), interpolation=cv2.INTER_NEAREST)
    assert cv2.imwrite(str(train_gt / f"{stem}.png"), small * 255)

    stem = TRAIN_CAM[3]  # RGBA PNG image
    coffee = photo("coffee", 241, 359)
    alpha = np.tile(np.linspace(64, 255, 359, dtype=np.float32).astype(np.uint8), (241, 1))
    bgra = np.dstack([cv2.cvtColor(coffee, cv2.COLOR_RGB2BGR), alpha])
    assert cv2.imwrite(str(train_img / f"{stem}.png"), bgra)
    expected[stem] = ellipse_mask(241, 359, 4)
    assert cv2.imwrite(str(train_gt / f"{stem}.png"), expected[stem] * 255)

    stem = TRAIN_CAM[4]  # grayscale JPEG image, 16-bit mask
    save_rgb(train_img / f"{stem}.jpg", photo("camera", 257, 301))
    expected[stem] = ellipse_mask(257, 301, 5)
    assert cv2.imwrite(str(train_gt / f"{stem}.png"), expected[stem].astype(np.uint16) * 65535)

    for stem, source in zip(TRAIN_NONCAM, ("rocket", "coffee")):
        save_rgb(train_img / f"{stem}.jpg", photo(source, 230, 310))
        expected[stem] = np.zeros((230, 310), np.uint8)
        assert cv2.imwrite(str(train_gt / f"{stem}.png"), expected[stem])

    # macOS resource forks and junk that must be ignored
    (train_img / f"._{TRAIN_CAM[0]}.jpg").write_bytes(b"\x00\x05\x16\x07 not an image")
    (train_gt / f"._{TRAIN_CAM[0]}.png").write_bytes(b"\x00\x05\x16\x07 not an image")
    (train_img / ".DS_Store").write_bytes(b"junk")
    (train_gt / "Thumbs.db").write_bytes(b"junk")

    test_img, test_gt = root / "Test" / "Image", root / "Test" / "GT_Object"
    for number, (stem, source) in enumerate(zip(TEST_CAM + TEST_NONCAM, ("chelsea", "astronaut", "coffee"))):
        save_rgb(test_img / f"{stem}.jpg", photo(source, 211 + number, 287))
        is_noncam = "NonCAM" in stem
        height = 211 + number
        expected[stem] = np.zeros((height, 287), np.uint8) if is_noncam else ellipse_mask(height, 287, 10 + number)
        assert cv2.imwrite(str(test_gt / f"{stem}.png"), expected[stem] * 255)
    return expected


@pytest.fixture(scope="session")
def cod10k_tree(tmp_path_factory) -> SimpleNamespace:
    """A small COD10K-v3 tree of real photographs.

    Attributes: root, expected (binary mask at image size by stem), train_cam, train_noncam,
    test_cam, test_noncam (stem lists).
    """
    root = tmp_path_factory.mktemp("cod10k") / "COD10K-v3"
    expected = _build_cod10k(root)
    return SimpleNamespace(
        root=root,
        expected=expected,
        train_cam=list(TRAIN_CAM),
        train_noncam=list(TRAIN_NONCAM),
        test_cam=list(TEST_CAM),
        test_noncam=list(TEST_NONCAM),
    )


def _build_pack(folder: Path, image_dir: str, mask_dir: str, stems: list[str]) -> None:
    (folder / image_dir).mkdir(parents=True)
    (folder / mask_dir).mkdir(parents=True)
    for number, stem in enumerate(stems):
        source = ("chelsea", "coffee", "astronaut")[number % 3]
        save_rgb(folder / image_dir / f"{stem}.jpg", photo(source, 160 + number, 203))
        assert cv2.imwrite(str(folder / mask_dir / f"{stem}.png"), ellipse_mask(160 + number, 203, number) * 255)


@pytest.fixture(scope="session")
def test_packs(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """CAMO-style ``Imgs + GT`` and NC4K-style ``Image + Mask`` packs: {name: (folder, stems)}."""
    base = tmp_path_factory.mktemp("packs")
    camo = ["camourflage_00012", "camourflage_00003", "camourflage_00110"]
    nc4k = ["1", "25", "4121"]
    _build_pack(base / "CAMO", "Imgs", "GT", camo)
    _build_pack(base / "NC4K", "Image", "Mask", nc4k)
    return {"CAMO": (base / "CAMO", camo), "NC4K": (base / "NC4K", nc4k)}
