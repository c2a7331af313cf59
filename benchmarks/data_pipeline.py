"""Benchmark: training images/s at 384 px from COD10K-sized JPEGs, resize cache none vs memory vs disk.

Writes 48 textured 1000x750 JPEGs (quality 90) and PNG masks to a temporary folder, then times
the training loader (2 workers, the training augmentation, each file 4 times per epoch) over warm
epochs: for ``disk`` the first epoch fills the cache and is not timed; ``memory`` is warmed in the
main process first, as training does; workers are persistent, as in training. Prints one JSON
line with the rates and the ratios against ``none`` (goal >= 3x).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from data.cache import CachedSegmentationDataset, base_size_for, build_cache  # noqa: E402
from data.layouts import SamplePair  # noqa: E402
from data.loaders import create_loader, set_loader_epoch  # noqa: E402
from data.transforms import build_train_transform  # noqa: E402

IMAGES = 48
WIDTH, HEIGHT = 1000, 750
IMG_SIZE = 384
NUM_WORKERS = 2
BATCH_SIZE = 8
TIMED_EPOCHS = 2
PERSISTENT = True  # as training runs by default (--persistent-workers)
# Each epoch lists every file this many times, so an epoch lasts long enough to time well.
REPEATS = 4


def write_samples(folder: Path) -> list[SamplePair]:
    """COD10K-like files: smooth colour fields plus fine grain (so JPEGs are ~photo-sized)."""
    rng = np.random.default_rng(0)
    pairs = []
    for number in range(IMAGES):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image + rng.normal(0, 18, image.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        centre = (int(rng.integers(250, 750)), int(rng.integers(200, 550)))
        cv2.ellipse(mask, centre, (int(rng.integers(80, 250)), int(rng.integers(60, 180))), 0, 0, 360, 255, -1)
        image_path, mask_path = folder / f"sample-{number:03d}.jpg", folder / f"sample-{number:03d}.png"
        assert cv2.imwrite(str(image_path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert cv2.imwrite(str(mask_path), mask)
        pairs.append(SamplePair(image_path, mask_path, image_path.stem))
    return pairs


def images_per_second(pairs: list[SamplePair], mode: str, cache_folder: Path) -> float:
    cache = build_cache(mode, base_size_for(IMG_SIZE), cache_folder)
    dataset = CachedSegmentationDataset(pairs * REPEATS, build_train_transform(IMG_SIZE), seed=0, cache=cache)
    if mode == "memory":
        dataset.warm(threads=NUM_WORKERS)  # before the workers fork, as training does
    loader = create_loader(dataset, BATCH_SIZE, shuffle=True, num_workers=NUM_WORKERS, seed=0,
                           persistent_workers=PERSISTENT)
    timings = []
    for epoch in range(1 + TIMED_EPOCHS):  # epoch 0 fills the disk cache and is not timed
        set_loader_epoch(loader, epoch)
        start = time.perf_counter()
        count = sum(len(batch["image"]) for batch in loader)
        timings.append(count / (time.perf_counter() - start))
    return float(np.median(timings[1:]))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="data-pipeline-bench-") as folder:
        pairs = write_samples(Path(folder))
        cache_folder = Path(folder) / "cache"
        rates = {mode: images_per_second(pairs, mode, cache_folder) for mode in ("none", "memory", "disk")}
    print(json.dumps({
        "benchmark": "data_pipeline",
        "files": IMAGES, "samples_per_epoch": IMAGES * REPEATS, "source_size": [WIDTH, HEIGHT],
        "img_size": IMG_SIZE, "num_workers": NUM_WORKERS,
        "images_per_s": {mode: round(rate, 1) for mode, rate in rates.items()},
        "memory_vs_none": round(rates["memory"] / rates["none"], 2),
        "disk_vs_none": round(rates["disk"] / rates["none"], 2),
        "goal": ">= 3x over none",
    }))


if __name__ == "__main__":
    main()
