"""The data-loader part of ``benchmarks/gpu_check.py``: the real training loader against the GPU's rate.

JPEGs on disk, read by the Trainer's own data module (``engine.training.data_module.build_data``:
the training transforms of ``data/``, the run's DataLoader workers, persistent as in training,
pinned memory with a GPU), each batch copied to the device as the Trainer does, with ``--cache none``
and ``--cache disk``. The JPEGs are a dataset folder given with ``--dataset-path`` (COD10K or CAMO
layout: what a GPU owner trains on), else synthetic scenes written as JPEG (quality 95) in the
COD10K-v3 layout by the ``synth`` command's writer, 768 px square: about a COD10K photograph's
pixels (most are 1024 x 768 or smaller), so decoding costs about what it costs there.

Per mode: images/s, the slower of ``TIMED_EPOCHS`` epochs after a first one that starts the workers and, for
``disk``, fills the cache (not timed); each epoch lists the files until it holds at least
``samples_per_epoch`` samples, so the workers' start of each epoch weighs as little as in a real
epoch of thousands. Then whether the loader keeps up with the AMP run's training images/s of each
stage on this GPU: one rank's loader against one GPU. Under DDP each rank has its own loader and
the ranks share the CPU cores (``resolve_num_workers`` divides them), so with two GPUs compare
``per_rank_needed`` (the GPU's rate) with a loader of half the workers.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from data.synthetic import write_synthetic_dataset
from engine.config import build_config
from engine.training.data_module import available_cpus, build_data, scan_data

LOADER_MODES = ("none", "disk")
TIMED_EPOCHS = 2
SCENE_SIDE = 768  # synthetic JPEGs: about a COD10K photograph's pixels


def jpeg_dataset(folder: Path, images: int, side: int = SCENE_SIDE) -> Path:
    """``images`` synthetic scenes written as JPEG in the COD10K-v3 layout under ``folder``."""
    write_synthetic_dataset(folder, images, 0, seed=0, size=side)
    return folder


def loader_rate(device: torch.device, settings: Dict[str, Any], root: Path, cache: str, folder: Path,
                samples_per_epoch: int, max_images: Optional[int] = None) -> Dict[str, Any]:
    """images/s of the training loader of ``settings`` on the JPEGs under ``root`` with ``--cache cache``."""
    values = dict(settings, dataset_path=str(root), cache=cache, checkpoint_dir=str(folder / f"run-{cache}"),
                  device=device.type)
    config = build_config({}, values)
    sources = scan_data(config)
    if max_images is not None:
        sources.train_pairs = sources.train_pairs[:max_images]
    files = len(sources.train_pairs)
    sources.train_pairs = sources.train_pairs * math.ceil(samples_per_epoch / files)
    data = build_data(config, (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), sources=sources)
    rates = []
    try:
        for epoch in range(1 + TIMED_EPOCHS):  # epoch 0 starts the workers and fills the disk cache
            started, images = time.perf_counter(), 0
            for batch in data.batches(data.train_dataset, config.batch_size, epoch, shuffle=True, start_sample=0):
                image = batch["image"].to(device, non_blocking=True)
                batch["mask"].to(device, non_blocking=True)
                images += len(image)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rates.append(images / (time.perf_counter() - started))
    finally:
        data.close()
    return {"images_per_s": round(min(rates[1:]), 1), "first_epoch_images_per_s": round(rates[0], 1),
            "training_files": files, "samples_per_epoch": len(data.train_dataset), "workers": data.num_workers}


def measure_loader(device: torch.device, settings: Dict[str, Any], folder: Path,
                   training: Optional[Dict[str, Any]], images: int = 64, dataset_path: Optional[Path] = None,
                   samples_per_epoch: int = 256, side: Optional[int] = None) -> Dict[str, Any]:
    """The loader's images/s with and without ``--cache disk`` beside the GPU's training images/s.

    ``training``: ``gpu_check``'s result of the AMP run (``stages`` with each stage's
    ``images_per_s``), None when it did not run. ``dataset_path``: read its first ``images``
    training images instead of writing synthetic ones.
    """
    side = side or SCENE_SIDE
    root = Path(dataset_path) if dataset_path else jpeg_dataset(folder / "jpegs", images, side)
    limit = images if dataset_path else None
    modes = {mode: loader_rate(device, settings, root, mode, folder, samples_per_epoch, limit)
             for mode in LOADER_MODES}
    needed = {stage: stats.get("images_per_s") for stage, stats in ((training or {}).get("stages") or {}).items()}
    result: Dict[str, Any] = {
        "jpegs": str(dataset_path) if dataset_path else f"synthetic, {side} px, JPEG quality 95",
        "img_size": settings["img_size"], "batch_size": settings["batch_size"], "cpu_cores": available_cpus(),
        "cache": modes, "per_rank_needed": needed}
    result["keeps_up"] = {mode: {stage: None if rate is None else modes[mode]["images_per_s"] >= rate
                                 for stage, rate in needed.items()} for mode in LOADER_MODES}
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        result["note"] = "under DDP each rank's loader gets a share of the CPU cores: compare with fewer workers"
    return result
