"""Datasets and loaders of a run: the synthetic set or COD10K-style folders, with a seeded split."""
from __future__ import annotations

import hashlib
import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.batch_scale import BatchScale
from data.cache import CachedSegmentationDataset, base_size_for, build_cache
from data.dataset import SegmentationDataset
from data.image_io import find_unreadable, masks_all_empty
from data.layouts import DATASET_FLAG, DatasetError, find_pairs_in_roots, has_separate_test_split
from data.loaders import SeededEpochSampler, create_loader, set_loader_epoch, stop_signals_blocked, stop_workers
from data.synthetic import SyntheticCamouflageDataset
from data.transforms import build_train_transform, build_val_transform
from engine.checkpoint.lock import write_error
from engine.config import TrainConfig
from engine.packages import check_training_packages

logger = logging.getLogger(__name__)

VAL_SEED_OFFSET = 1_000_003  # validation scenes come from a different stream than training scenes
# Workers per rank when --num-workers is not given: a cap, not a measured optimum. On this project's
# CPU benchmark (README, data_pipeline.py) 2 workers decode and augment about 71 images/s at 384 px;
# each further worker is one more process holding its own copy of the dataset.
MAX_AUTO_WORKERS = 4


@dataclass
class DataModule:
    """Train/val datasets plus loader construction for the Trainer.

    ``loader(dataset, batch_size, epoch, shuffle, start_sample)`` returns a loader whose order
    is a pure function of (seed, epoch), starting ``start_sample`` samples into the epoch. With
    ``persistent_workers`` one loader per dataset is kept and re-pointed every epoch, so its
    workers start once per batch size instead of once per epoch; :meth:`close` stops them.
    """

    train_dataset: Dataset
    val_dataset: Dataset
    num_workers: int
    seed: int
    description: str
    pin_memory: bool = False
    rank: int = 0
    world_size: int = 1
    persistent_workers: bool = False
    batch_scale: Optional[BatchScale] = None  # multi-scale training (--train-scales); None: every batch as it comes
    _loaders: dict = field(default_factory=dict, repr=False)  # id(dataset) -> DataLoader
    _iterators: weakref.WeakSet = field(default_factory=weakref.WeakSet, repr=False)
    _fingerprint: Optional[Dict[str, object]] = field(default=None, repr=False)

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def loader(self, dataset: Dataset, batch_size: int, epoch: int, shuffle: bool, start_sample: int) -> DataLoader:
        loader = self._loaders.get(id(dataset))
        if loader is None or loader.batch_size != batch_size or loader.sampler.shuffle != shuffle:
            # Training pads so every rank makes the same number of steps; validation does not, so
            # all-reduced sums count each image exactly once. Epoch tags carry the epoch into workers.
            sampler = SeededEpochSampler(dataset, shuffle=shuffle, seed=self.seed, num_replicas=self.world_size,
                                         rank=self.rank, pad=shuffle, tag_epoch=True)
            loader = create_loader(dataset, batch_size, shuffle, self.num_workers, self.seed, epoch_sampler=sampler,
                                   pin_memory=self.pin_memory, persistent_workers=self.persistent_workers)
            if self.persistent_workers:
                self._loaders[id(dataset)] = loader  # replaces (and so stops) the previous batch size's workers
        set_loader_epoch(loader, epoch, start_sample)
        return loader

    def training_inputs(self, batch: Dict[str, torch.Tensor], device: torch.device, memory_format: torch.memory_format,
                        epoch: int, batch_index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """A training batch's ``(B, 3, S, S)`` images and ``(B, 1, S, S)`` masks on ``device``, at the
        side multi-scale training draws for ``(epoch, batch_index)`` (``--img-size`` without it)."""
        images = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
        masks = batch["mask"].to(device, non_blocking=True)
        return (images, masks) if self.batch_scale is None else self.batch_scale(images, masks, epoch, batch_index)

    def batches(self, dataset: Dataset, batch_size: int, epoch: int, shuffle: bool, start_sample: int) -> Iterator:
        """An iterator over :meth:`loader`'s batches whose workers :meth:`close` stops explicitly."""
        loader = self.loader(dataset, batch_size, epoch, shuffle, start_sample)
        with stop_signals_blocked():  # workers fork inside iter()
            iterator = iter(loader)
        self._iterators.add(iterator)
        return iterator

    def close(self) -> None:
        """Stop every worker now: persistent ones and those of iterators still referenced.

        Not left to garbage collection: a failing epoch's traceback keeps its iterator alive in a
        reference cycle until interpreter exit, where multiprocessing would join workers that
        ignore SIGTERM (see ``data.loaders``) and the run would hang instead of exiting.
        """
        for iterator in list(self._iterators):
            stop_workers(iterator)
        self._iterators.clear()
        for loader in self._loaders.values():
            stop_workers(getattr(loader, "_iterator", None))
        self._loaders.clear()

    def fingerprint(self) -> Dict[str, object]:
        """What identifies the training set: its size and a hash of its sample names in order
        (a checkpoint stores it; a resume compares it, see ``engine.training.resume``). Computed
        once: every checkpoint save asks, and the set does not change during a run."""
        if self._fingerprint is None:
            self._fingerprint = self._hash_training_set()
        return dict(self._fingerprint)

    def _hash_training_set(self) -> Dict[str, object]:
        pairs = getattr(self.train_dataset, "pairs", None)
        names = [pair.name for pair in pairs] if pairs is not None else [f"synthetic:{len(self.train_dataset)}"]
        digest = hashlib.sha1("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()
        return {"train_samples": len(self.train_dataset), "names_sha1": digest}

    @property
    def samples_per_rank(self) -> int:
        """Training samples this process sees per epoch (padded shard of the permutation)."""
        return -(-len(self.train_dataset) // self.world_size)

    def all_reduce(self, totals: torch.Tensor) -> torch.Tensor:
        """Sum ``totals`` over processes (identity in a single process)."""
        if self.world_size > 1:
            torch.distributed.all_reduce(totals)
        return totals


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one: taskset, cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_num_workers(requested: Optional[int], world_size: int = 1, warn: bool = True) -> int:
    """DataLoader workers per process: ``requested`` (``--num-workers``), or for None the CPU cores
    shared out between the ``world_size`` ranks, at most ``MAX_AUTO_WORKERS`` (0 when there are
    more ranks than cores: each rank then loads in its main process).

    Kaggle's 4 cores: 4 workers on one GPU, 2 per rank on two. An explicit number is kept; with
    ``warn``, a warning says when the workers of all ranks together outnumber the cores.
    """
    cpus = available_cpus()
    shared_out = min(MAX_AUTO_WORKERS, cpus // max(1, world_size))
    if requested is None:
        return shared_out
    if warn and requested * world_size > cpus:
        logger.warning("--num-workers %d x %d process(es) = %d DataLoader workers for %d CPU cores: they compete "
                       "with training for the cores; leave --num-workers out to use %d per process",
                       requested, world_size, requested * world_size, cpus, shared_out)
    return requested


def split_train_val(pairs: Sequence, fraction: float, seed: int) -> Tuple[list, list]:
    """A seeded random hold-out (not the first N sorted files: those cluster by class in COD10K)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    count = max(1, int(round(len(pairs) * fraction)))
    held_out = set(order[:count].tolist())
    train = [pair for index, pair in enumerate(pairs) if index not in held_out]
    val = [pair for index, pair in enumerate(pairs) if index in held_out]
    return train, val


def drop_unreadable(pairs: list, skip: bool) -> list:
    """Check every file's ends and header before training (cheap); stop on the first bad one unless ``skip``.

    Bad: unreadable or truncated files, masks with width and height swapped (``find_unreadable``).
    """
    bad = find_unreadable(pairs)
    if bad and not skip:
        raise DatasetError(f"bad sample {bad[0][1]} ({len(bad)} bad sample(s) in all); "
                           "replace it or pass --skip-bad-samples")
    if bad:
        logger.warning("Skipping %d bad sample(s) (--skip-bad-samples): %s", len(bad),
                       "; ".join(problem for _, problem in bad[:5]) + (" ..." if len(bad) > 5 else ""))
        dropped = {id(pair) for pair, _ in bad}
        pairs = [pair for pair in pairs if id(pair) not in dropped]
    return pairs


def count_training_samples(config: TrainConfig, origin: str = DATASET_FLAG) -> int:
    """Training images per epoch (for ``--dry-run`` plans) without building the datasets; ``origin``
    as in :func:`scan_data`."""
    if config.dataset_path is None:
        return config.synthetic_train_size
    try:
        pairs = find_pairs_in_roots(config.dataset_roots, "train", config.include_noncam, config.skip_unpaired)
    except DatasetError as error:
        raise error.naming(origin) from None
    if config.val_fraction > 0:
        return len(split_train_val(pairs, config.val_fraction, config.seed)[0])
    return len(pairs)


@dataclass
class DataSources:
    """The image/mask pairs of a run, found and checked before the model is built.

    ``train_pairs`` is None for the built-in synthetic set.
    """

    train_pairs: Optional[list] = None
    val_pairs: Optional[list] = None
    val_source: str = ""


def dataset_origin(flag_values: Mapping[str, Any], yaml_values: Mapping[str, Any], config_file: Optional[str]) -> str:
    """Where the run's dataset path came from, as its errors name it: the flag, the YAML key of
    ``--config FILE``, or (neither: a resume) the resumed checkpoint's config."""
    if flag_values.get("dataset_path") is not None:
        return DATASET_FLAG
    if yaml_values.get("dataset_path") is not None:
        return f"dataset_path in {config_file}"
    return f"the dataset_path stored in the resumed checkpoint's config (override it with {DATASET_FLAG})"


def scan_data(config: TrainConfig, origin: str = DATASET_FLAG) -> DataSources:
    """Find, split and check the dataset's files; a wrong ``--dataset-path`` fails here, fast.

    Args:
        config: the run's settings.
        origin: how errors name the dataset setting (:func:`dataset_origin`), e.g. ``dataset_path in a.yaml``.

    Raises:
        DatasetError: no usable pairs, or an unreadable file without ``--skip-bad-samples``.
        MissingPackageError: a package the settings need is not installed (``engine.packages``).
    """
    check_training_packages(config)  # e.g. pysodmetrics for --best-metric sm: refused before anything is built
    try:
        return _scan_data(config)
    except DatasetError as error:
        raise error.naming(origin) from None


def _scan_data(config: TrainConfig) -> DataSources:
    if config.dataset_path is None:
        return DataSources()
    roots = config.dataset_roots
    pairs = find_pairs_in_roots(roots, "train", config.include_noncam, config.skip_unpaired)
    if config.val_fraction == 0:  # validating on "Test": a root without one would validate on its training images
        lacking = [root for root in roots if not has_separate_test_split(root)]
        if lacking:
            raise DatasetError(f"--val-fraction 0 validates on each root's Test split, but {', '.join(lacking)} "
                               "has none (it would validate on its own training images); hold out a seeded "
                               "fraction instead, e.g. --val-fraction 0.1")
    if config.val_fraction > 0:
        train_pairs, val_pairs = split_train_val(pairs, config.val_fraction, config.seed)
        source = f"{config.val_fraction:.0%} of Train held out" + (f" of {len(roots)} roots" if len(roots) > 1 else "")
    else:
        val_pairs = find_pairs_in_roots(roots, "test", config.include_noncam, config.skip_unpaired)
        train_pairs, source = pairs, "the Test split"
    train_pairs = drop_unreadable(train_pairs, config.skip_bad_samples)
    val_pairs = drop_unreadable(val_pairs, config.skip_bad_samples)
    if not train_pairs:
        raise DatasetError(f"no training images left in {', '.join(roots)} after the validation split; "
                           "lower --val-fraction")
    # One mask decode on healthy data (it stops at the first object); all masks only when all are empty.
    if masks_all_empty(train_pairs + val_pairs):
        logger.warning("All %d masks in %s are empty (no pixel > 127): nothing to learn; check the mask format "
                       "(gray 0/255, colour and palette PNGs are read) or --dataset-path",
                       len(train_pairs) + len(val_pairs), ", ".join(roots))
    return DataSources(train_pairs, val_pairs, source)


def cache_folders(config: TrainConfig, warn: bool = True) -> Tuple[str, List[Path]]:
    """The disk cache's writable folder and the read-only folders it also reads.

    ``--cache-dir`` (default ``<checkpoint-dir>/resize-cache``) when it is writable. A read-only one
    (e.g. a previous session's output under ``/kaggle/input``) is only read, and the misses go to
    ``<checkpoint-dir>/resize-cache``. With ``--continue-from``, the previous output's resize cache
    is read too.
    """
    default = Path(config.checkpoint_dir) / "resize-cache"
    requested = Path(config.cache_dir) if config.cache_dir else default
    read_only: List[Path] = []
    writable = requested
    if write_error(requested) is not None and requested != default:
        if warn:
            logger.warning("--cache-dir %s is not writable: reading its entries, writing new ones to %s", requested,
                           default)
        read_only.append(requested)
        writable = default
    if config.continue_from:
        previous = Path(config.continue_from)
        read_only += [folder for folder in (previous / "resize-cache", *sorted(previous.glob("*/resize-cache")))
                      if folder.is_dir() and folder.resolve() != writable.resolve()]
    return str(writable), read_only


def build_data(config: TrainConfig, normalization: Tuple[Sequence[float], Sequence[float]], rank: int = 0,
               world_size: int = 1, sources: Optional[DataSources] = None) -> DataModule:
    """Datasets with albumentations pipelines normalised like the backbone's pretrained config.

    Args:
        config: the run's settings.
        normalization: ``(mean, std)`` of the encoder's input normalisation.
        rank, world_size: this process's place under DDP.
        sources: from :func:`scan_data` (scanned here when None).
    """
    sources = sources if sources is not None else scan_data(config)
    num_workers = resolve_num_workers(config.num_workers, world_size, warn=rank == 0)
    mean, std = normalization
    train_transform = build_train_transform(config.img_size, mean, std)
    val_transform = build_val_transform(config.img_size, mean, std)
    if sources.train_pairs is None:
        train = SyntheticCamouflageDataset(config.synthetic_train_size, config.img_size, config.seed,
                                           config.synthetic_difficulty, train_transform, fresh_each_epoch=True)
        val = SyntheticCamouflageDataset(config.synthetic_val_size, config.img_size, config.seed + VAL_SEED_OFFSET,
                                         config.synthetic_difficulty, val_transform, fresh_each_epoch=False)
        description = (f"synthetic camouflage scenes at {config.img_size}px: {len(train)} fresh per epoch, "
                       f"{len(val)} fixed for validation")
    else:
        cache_dir, read_only = cache_folders(config, warn=rank == 0) if config.cache == "disk" else (None, [])
        cache = build_cache(config.cache, base_size_for(config.img_size), cache_dir, read_only)
        train = CachedSegmentationDataset(sources.train_pairs, train_transform, seed=config.seed, cache=cache,
                                          skip_bad=config.skip_bad_samples)
        if config.cache == "memory":
            train.warm(threads=max(1, num_workers))  # before workers fork, so they share it
        val = SegmentationDataset(sources.val_pairs, val_transform, seed=config.seed, skip_bad=config.skip_bad_samples)
        description = (f"{', '.join(config.dataset_roots)}: {len(train)} training, {len(val)} validation images "
                       f"({sources.val_source})")
    description += f"; {num_workers} DataLoader workers" + (" per rank" if world_size > 1 else "")
    batch_scale = BatchScale(config.img_size, config.train_sides, config.seed)
    if batch_scale.enabled:
        description += f"; multi-scale training at {', '.join(map(str, batch_scale.sides))} px"
    return DataModule(train, val, num_workers, config.seed, description,
                      pin_memory=torch.cuda.is_available(), rank=rank, world_size=world_size,
                      persistent_workers=config.persistent_workers,
                      batch_scale=batch_scale if batch_scale.enabled else None)
