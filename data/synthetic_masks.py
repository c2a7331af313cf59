"""Object shapes for synthetic camouflage scenes: smooth random blobs and animal silhouettes."""

from __future__ import annotations

import functools

import cv2
import numpy as np

MIN_AREA = 0.10
MAX_AREA = 0.40
# Object centres are drawn anywhere in this fraction of the frame; a narrower range lets a
# predictor that always outputs the dataset's mean mask score IoU > 0.3.
CENTRE_RANGE = (0.12, 0.88)
_MAX_ATTEMPTS = 8


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of a square frame, each (H, W) float32 (cached per size)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


@functools.lru_cache(maxsize=1)
def _horse_silhouette() -> np.ndarray:
    """skimage's horse, cropped to its bounding box, as uint8 (h, w) in {0, 255}."""
    from skimage import data as skdata

    horse = ~skdata.horse()  # skimage draws the horse as False on a True background
    rows = np.flatnonzero(horse.any(axis=1))
    cols = np.flatnonzero(horse.any(axis=0))
    crop = horse[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return crop.astype(np.uint8) * 255


def largest_component(binary: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground component.

    Args:
        binary: (H, W) bool or uint8 mask.

    Returns:
        (H, W) bool mask holding one component (all False if the input is empty).
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(binary.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def _area_ok(mask: np.ndarray) -> bool:
    return MIN_AREA <= float(mask.mean()) <= MAX_AREA


def _random_centre(rng: np.random.Generator, size: int) -> tuple[float, float]:
    low, high = CENTRE_RANGE
    centre_y, centre_x = rng.uniform(low, high, size=2) * size
    return float(centre_y), float(centre_x)


def _random_area(rng: np.random.Generator) -> float:
    # Log-uniform: small objects are as common as large ones, which keeps "predict a big central
    # region" baselines weak.
    return float(np.exp(rng.uniform(np.log(MIN_AREA + 0.02), np.log(MAX_AREA))))


def _blob_attempt(rng: np.random.Generator, size: int) -> np.ndarray:
    """One smooth random blob: an anisotropic bump plus upsampled noise, thresholded by quantile."""
    area = _random_area(rng)
    centre_y, centre_x = _random_centre(rng, size)
    rows, cols = _pixel_grid(size)
    angle = rng.uniform(0.0, np.pi)
    stretch = rng.uniform(0.6, 1.6)
    dy, dx = rows - centre_y, cols - centre_x
    along = (dx * np.cos(angle) + dy * np.sin(angle)) / stretch
    across = (-dx * np.sin(angle) + dy * np.cos(angle)) * stretch
    radius = np.sqrt(area / np.pi) * size
    bump = 1.0 - np.sqrt(along * along + across * across) / radius
    cells = int(rng.integers(3, 8))
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    noise = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    field = bump + rng.uniform(0.3, 0.8) * noise
    # Threshold at the quantile that leaves `area` of the pixels on.
    keep = int(area * size * size)
    threshold = np.partition(field.ravel(), field.size - keep)[field.size - keep]
    return largest_component(field >= threshold)


def _silhouette_attempt(rng: np.random.Generator, size: int) -> np.ndarray:
    """The horse silhouette, randomly scaled, mirrored, slightly rotated and placed."""
    horse = _horse_silhouette()
    height, width = horse.shape
    fill = float(horse.mean()) / 255.0
    area = _random_area(rng)
    scale = np.sqrt(area * size * size / (fill * height * width))
    angle = rng.uniform(-20.0, 20.0)
    centre_y, centre_x = _random_centre(rng, size)
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, scale)
    if rng.random() < 0.5:  # mirror left-right about the silhouette's centre
        matrix[:, 0] *= -1.0
        matrix[:, 2] += matrix[:, 0] * -width
    # Move the silhouette's centre to the drawn centre.
    mapped_centre = matrix @ np.array([width / 2.0, height / 2.0, 1.0])
    matrix[:, 2] += np.array([centre_x, centre_y]) - mapped_centre
    warped = cv2.warpAffine(horse, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return largest_component(warped > 127)


def _ellipse_fallback(rng: np.random.Generator, size: int) -> np.ndarray:
    """An ellipse that fits inside the frame; only used if random attempts keep failing."""
    mask = np.zeros((size, size), dtype=np.uint8)
    axes = (int(size * 0.3), int(size * 0.22))
    centre = (size // 2 + int(rng.integers(-size // 10, size // 10 + 1)), size // 2)
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def random_object_mask(rng: np.random.Generator, size: int, silhouette_prob: float = 0.25) -> np.ndarray:
    """Draw one object mask covering 10-40 % of a square frame.

    Args:
        rng: generator the shape is drawn from (consumed; deterministic given its state).
        size: frame side in pixels.
        silhouette_prob: chance of a horse silhouette instead of a smooth blob.

    Returns:
        (size, size) bool mask with a single connected component.
    """
    use_silhouette = rng.random() < silhouette_prob
    for _ in range(_MAX_ATTEMPTS):
        mask = _silhouette_attempt(rng, size) if use_silhouette else _blob_attempt(rng, size)
        if _area_ok(mask):
            return mask
    return _ellipse_fallback(rng, size)
