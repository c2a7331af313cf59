"""Synthetic camouflage scenes: an object cut from the same texture family as its background.

Each scene is a pure function of ``(seed, index)``. The background is a randomly scaled and
rotated crop of a grayscale texture (skimage's grass, gravel, brick, or a procedural noise
texture) with a random RGB tint; the object is another crop of the same texture whose contrast,
brightness, scale and tint differ by about ``difficulty``; the object's shape is a smooth random
blob or a horse silhouette (see :mod:`data.synthetic_masks`) pasted with soft edges.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.loaders import EpochIndex, split_epoch_index
from data.synthetic_masks import random_object_mask
from data.transforms import augmentation_seed, to_sample

logger = logging.getLogger(__name__)

TEXTURE_NAMES = ("grass", "gravel", "brick", "noise")
# Test scenes use indices from here on, so no training epoch (index = epoch * n + i) reaches them.
TEST_INDEX_OFFSET = 1 << 40
SYNTHETIC_PREFIX = "COD10K-CAM-Synthetic-"


def _procedural_noise(side: int = 512, seed: int = 1234) -> np.ndarray:
    """A fixed multi-octave value-noise texture, (side, side) float32."""
    rng = np.random.default_rng(seed)
    texture = np.zeros((side, side), dtype=np.float32)
    for octave, cells in enumerate((8, 16, 32, 64, 128)):
        layer = rng.standard_normal((cells, cells)).astype(np.float32)
        texture += cv2.resize(layer, (side, side), interpolation=cv2.INTER_CUBIC) * 0.7**octave
    return texture


@functools.lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """The texture bank, loaded once per process: each (512, 512) float32, zero mean, unit std."""
    from skimage import data as skdata

    raw = [skdata.grass(), skdata.gravel(), skdata.brick(), _procedural_noise()]
    bank = []
    for texture in raw:
        texture = texture.astype(np.float32)
        texture = (texture - texture.mean()) / (texture.std() + 1e-6)
        texture.setflags(write=False)
        bank.append(texture)
    return tuple(bank)


def _texture_view(texture: np.ndarray, rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """A randomly positioned and rotated crop of ``texture`` sampled at ``scale`` texels per pixel.

    Returns:
        (size, size) float32 crop.
    """
    angle = rng.uniform(0.0, 2.0 * np.pi)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    source_y, source_x = rng.uniform(0.0, texture.shape[0], size=2)
    half = size / 2.0
    # Maps output pixel (x, y) to texture coordinates (inverse map for warpAffine).
    matrix = np.array(
        [[cos, -sin, source_x - cos * half + sin * half], [sin, cos, source_y - sin * half - cos * half]],
        dtype=np.float64,
    )
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(texture, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REFLECT_101)


def render_scene(seed: int, index: int, size: int = 128, difficulty: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic camouflage scene.

    Args:
        seed: dataset seed.
        index: scene index; the scene is a pure function of ``(seed, index)``.
        size: side of the square scene in pixels.
        difficulty: appearance gap ``d`` between object and background: brightness shifted by
            +-d (full-range units), texture contrast scaled by 1 +- d, tint perturbed by +-d,
            texture scale by up to +-d. Despite the name, *smaller is harder* (0 leaves only
            texture orientation and the seam). At 0.15 and 128 px, mean-mask and global
            brightness-threshold baselines score IoU ~0.22-0.26, while a from-scratch
            edgenext_xx_small FPN reaches ~0.55 after ~300 steps of batch 16.

    Returns:
        image: (size, size, 3) uint8 RGB.
        mask: (size, size) uint8 in {0, 255}.
    """
    rng = np.random.default_rng([seed, index])
    gap = float(difficulty)
    texture = _textures()[int(rng.integers(len(TEXTURE_NAMES)))]

    background_scale = rng.uniform(0.5, 1.5)
    object_scale = background_scale * (1.0 + rng.uniform(-gap, gap))
    background = _texture_view(texture, rng, size, background_scale)
    foreground = _texture_view(texture, rng, size, object_scale)

    mask = random_object_mask(rng, size)
    edge_sigma = rng.uniform(0.8, 2.0) * size / 128.0
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), edge_sigma)

    # Texture contrast near the raw skimage textures' (std 0.10-0.15 of full range).
    contrast = rng.uniform(0.08, 0.16)
    object_contrast = contrast * (1.0 + rng.choice([-1.0, 1.0]) * gap)
    object_shift = rng.choice([-1.0, 1.0]) * gap  # in full-range units, after the tint
    tint = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
    object_tint = np.clip(tint + rng.uniform(-gap, gap, size=3), 0.05, None).astype(np.float32)
    background_rgb = (0.5 + contrast * background)[..., None] * tint
    foreground_rgb = (0.5 + object_contrast * foreground)[..., None] * object_tint + object_shift
    image = background_rgb + alpha[..., None] * (foreground_rgb - background_rgb)
    image *= rng.uniform(0.75, 1.25)  # exposure: keeps one global brightness threshold useless
    image_uint8 = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image_uint8, mask.astype(np.uint8) * 255


class SyntheticCamouflageDataset(Dataset):
    """Synthetic camouflage scenes rendered on the fly, optionally fresh every epoch.

    Item ``i`` of epoch ``e`` renders scene ``index_offset + e * num_samples + i`` when
    ``fresh_each_epoch`` (so a small model cannot memorise a fixed set), else ``index_offset + i``.
    Augmentation randomness is a pure function of ``(seed, epoch, i)``.
    """

    def __init__(
        self,
        num_samples: int,
        size: int = 128,
        seed: int = 0,
        difficulty: float = 0.15,
        transform=None,
        fresh_each_epoch: bool = False,
        index_offset: int = 0,
    ) -> None:
        """Args:
        num_samples: scenes per epoch.
        size: rendered side in pixels (the transform may resize further).
        seed: scene and augmentation seed.
        difficulty: see :func:`render_scene`.
        transform: albumentations pipeline from :mod:`data.transforms`, or None for plain tensors.
        fresh_each_epoch: render new scenes every epoch.
        index_offset: first scene index (use :data:`TEST_INDEX_OFFSET` for held-out scenes).
        """
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.num_samples = num_samples
        self.size = size
        self.seed = seed
        self.difficulty = difficulty
        self.transform = transform
        self.fresh_each_epoch = fresh_each_epoch
        self.index_offset = index_offset
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (changes scenes if ``fresh_each_epoch`` and augmentation always)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def scene_index(self, index: int, epoch: Optional[int] = None) -> int:
        """Scene rendered for item ``index`` in ``epoch`` (default: the epoch of :meth:`set_epoch`)."""
        epoch = self.epoch if epoch is None else epoch
        epoch_base = epoch * self.num_samples if self.fresh_each_epoch else 0
        return self.index_offset + epoch_base + index

    def __getitem__(self, item: int | EpochIndex) -> dict[str, torch.Tensor | str | int]:
        """Returns {"image": (3, H, W) float32, "mask": (1, H, W) float32 in {0, 1}, "name", "index"}.

        ``item`` is an int (epoch from :meth:`set_epoch`) or an :class:`~data.loaders.EpochIndex`.
        """
        epoch, index = split_epoch_index(item, self.epoch)
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        scene = self.scene_index(index, epoch)
        image, mask = render_scene(self.seed, scene, self.size, self.difficulty)
        aug_seed = augmentation_seed(self.seed, epoch, index)
        image_tensor, mask_tensor = to_sample(self.transform, image, mask // 255, aug_seed)
        return {"image": image_tensor, "mask": mask_tensor, "name": f"{SYNTHETIC_PREFIX}{scene}", "index": index}


def _write_split(
    root: Path, split: str, count: int, first_number: int, seed: int, size: int, difficulty: float, index_offset: int
) -> None:
    """Render ``count`` scenes from ``index_offset`` into ``<root>/<split>/{Image,GT_Object}``."""
    image_dir, mask_dir = root / split / "Image", root / split / "GT_Object"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for offset in range(count):
        image, mask = render_scene(seed, index_offset + offset, size, difficulty)
        stem = f"{SYNTHETIC_PREFIX}{first_number + offset:05d}"
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(image_dir / f"{stem}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise OSError(f"could not write {image_dir / (stem + '.jpg')}")
        if not cv2.imwrite(str(mask_dir / f"{stem}.png"), mask):
            raise OSError(f"could not write {mask_dir / (stem + '.png')}")


def write_synthetic_dataset(
    output_dir: str | Path, num_train: int, num_test: int, seed: int = 0, size: int = 256, difficulty: float = 0.15
) -> dict[str, int]:
    """Write synthetic scenes to disk in the COD10K-v3 layout.

    Creates ``Train/Image/COD10K-CAM-Synthetic-00001.jpg`` (JPEG quality 95) with
    ``Train/GT_Object/COD10K-CAM-Synthetic-00001.png`` (0/255), and the same under ``Test``.
    Train renders scenes ``0..num_train-1``; test renders scenes from :data:`TEST_INDEX_OFFSET`
    and numbers its files after the training ones, so the splits never share a scene or a name.

    Args:
        output_dir: dataset root to create (existing files with the same names are overwritten).
        num_train: training scenes.
        num_test: test scenes.
        seed: scene seed.
        size: square side in pixels.
        difficulty: see :func:`render_scene`.

    Returns:
        {"train": num_train, "test": num_test}.
    """
    root = Path(output_dir)
    _write_split(root, "Train", num_train, 1, seed, size, difficulty, 0)
    _write_split(root, "Test", num_test, num_train + 1, seed, size, difficulty, TEST_INDEX_OFFSET)
    logger.info("Wrote %d train + %d test synthetic scenes (%d px) to %s", num_train, num_test, size, root)
    return {"train": num_train, "test": num_test}
