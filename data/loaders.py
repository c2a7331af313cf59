"""DataLoaders whose sample order is a pure function of (seed, epoch), resumable mid-epoch.

Persistent workers keep the dataset copy they were started with, so a ``dataset.set_epoch``
call in the main process never reaches them. The sampler therefore tags every index with its
epoch (:class:`EpochIndex`); datasets read the epoch from the index they are given
(:func:`split_epoch_index`), which works with fresh and persistent workers alike.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator, Sized
from typing import NamedTuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)

_SHUFFLE_TAG = 0x5EED  # keeps shuffle seeds apart from augmentation seeds built from the same numbers


class EpochIndex(NamedTuple):
    """A dataset index together with the epoch it is drawn for (what tagged samplers yield)."""

    epoch: int
    index: int


def split_epoch_index(item: Union[int, EpochIndex], default_epoch: int) -> tuple[int, int]:
    """``(epoch, index)`` of a dataset key: an :class:`EpochIndex`, or a plain int in ``default_epoch``."""
    if isinstance(item, tuple):
        return int(item[0]), int(item[1])
    return default_epoch, int(item)


class SeededEpochSampler(Sampler):
    """Yields a permutation that depends only on ``(seed, epoch)``, optionally from an offset.

    Mid-epoch resume: after ``b`` finished batches of size ``B`` call
    ``set_epoch(epoch, start_index=b * B)``; the sampler then yields exactly the samples the
    interrupted epoch had not reached. The next ``set_epoch`` call resets the offset to 0.

    With ``num_replicas > 1`` (DDP), each rank takes every ``num_replicas``-th index of the
    shared permutation, padded by wrapping so all ranks see the same count.

    With ``tag_epoch`` it yields :class:`EpochIndex` items instead of ints, so the epoch reaches
    datasets inside persistent workers.
    """

    def __init__(
        self,
        data_source: Sized | int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pad: bool = True,
        tag_epoch: bool = False,
    ) -> None:
        """Args:
        data_source: the dataset (or its length).
        shuffle: permute each epoch; otherwise yield 0..n-1.
        seed: shuffle seed (>= 0).
        num_replicas: number of distributed processes.
        rank: this process's rank in ``[0, num_replicas)``.
        pad: wrap the permutation so every rank gets the same count (training); without it each
            sample is seen exactly once across ranks (exact sharded validation).
        tag_epoch: yield ``EpochIndex(epoch, index)`` (needed with persistent workers).
        """
        self.num_samples_total = data_source if isinstance(data_source, int) else len(data_source)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.tag_epoch = tag_epoch
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch and how many of this rank's samples to skip (mid-epoch resume)."""
        per_rank = self._per_rank()
        if not 0 <= start_index <= per_rank:
            raise ValueError(f"start_index must be in [0, {per_rank}], got {start_index}")
        self.epoch = int(epoch)
        self.start_index = int(start_index)

    def _per_rank(self) -> int:
        if not self.pad:
            return len(range(self.rank, self.num_samples_total, self.num_replicas))
        return -(-self.num_samples_total // self.num_replicas)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's full order for ``epoch`` (ignoring ``start_index``)."""
        total = self.num_samples_total
        if self.shuffle:
            shuffle_seed = int(np.random.SeedSequence([self.seed, epoch, _SHUFFLE_TAG]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(shuffle_seed)
            order = torch.randperm(total, generator=generator).tolist()
        else:
            order = list(range(total))
        padded_length = -(-total // self.num_replicas) * self.num_replicas
        if self.pad and total and padded_length > total:
            order = order + order[: padded_length - total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[Union[int, EpochIndex]]:
        order = self.epoch_order(self.epoch)[self.start_index :]
        if self.tag_epoch:
            return iter([EpochIndex(self.epoch, index) for index in order])
        return iter(order)

    def __len__(self) -> int:
        return self._per_rank() - self.start_index


def _worker_init(worker_id: int) -> None:
    # Each worker is one process; letting OpenCV and torch spawn a thread pool in every worker
    # oversubscribes Kaggle's few cores. Randomness needs no seeding here: datasets seed per sample.
    # Warning: 0 (run serially), not 1: resizing OpenCV's pool inherited through fork() to one
    # thread deadlocks the worker.
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    # The main process decides how a run stops (finish the optimizer step, save last.pth). Kaggle,
    # `docker stop`, SLURM and a terminal's Ctrl-C signal the whole process group, and a worker
    # killed first would make the main process die in the DataLoader with a traceback instead.
    # Workers still exit with the main process: they watch their parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        # Forked with these signals blocked (see stop_signals_blocked); one that arrived meanwhile
        # is pending and is now discarded, being ignored.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_blocked():
    """Block SIGINT/SIGTERM in the calling thread while DataLoader workers are forked.

    A group signal (Kaggle, ``docker stop``, Ctrl-C) landing between a worker's fork and its
    ``_worker_init`` would kill the worker before it ignores the signal, and the main process would
    die in torch's worker watchdog with a traceback instead of saving. Children inherit the mask, so
    the signal waits until the worker ignores it; the main thread receives its copy on unblock.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no fork, no process-group signals
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def create_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    epoch_sampler: SeededEpochSampler | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """Build a DataLoader with a reproducible order (see :class:`SeededEpochSampler`).

    Call :func:`set_loader_epoch` at the start of every epoch. With ``persistent_workers`` the
    same loader is meant to be iterated epoch after epoch: workers start once, and the epoch
    reaches them inside each index (the sampler must have ``tag_epoch=True``).

    Args:
        dataset: map-style dataset returning dicts of tensors.
        batch_size: samples per batch.
        shuffle: permute per epoch (ignored when ``epoch_sampler`` is given).
        num_workers: worker processes (0 loads in the main process).
        seed: shuffle seed; also seeds the loader's own generator.
        epoch_sampler: custom sampler, e.g. with ``num_replicas``/``rank`` for DDP.
        drop_last: drop the last incomplete batch.
        pin_memory: pin host memory for faster GPU copies.
        persistent_workers: keep worker processes (and what they cached) alive between epochs;
            ignored without workers.

    Returns:
        DataLoader yielding {"image": (B, 3, H, W), "mask": (B, 1, H, W), "name": list[str],
        "index": (B,)}.
    """
    persistent_workers = persistent_workers and num_workers > 0
    if epoch_sampler is None:
        epoch_sampler = SeededEpochSampler(dataset, shuffle=shuffle, seed=seed, tag_epoch=persistent_workers)
    if persistent_workers and not getattr(epoch_sampler, "tag_epoch", False):
        # Without epoch tags the workers would augment every epoch like the first one.
        raise ValueError("persistent workers need a SeededEpochSampler with tag_epoch=True")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=epoch_sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=persistent_workers,
    )


def stop_workers(iterator) -> None:
    """Shut a DataLoader iterator's worker processes down now (no-op for None or in-process loading).

    Workers ignore SIGTERM (see ``_worker_init``), so they must be told to stop: torch does it when
    the iterator is garbage-collected, which an exception's reference cycle can delay to exit.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's own clean shutdown
    if shutdown is not None:
        shutdown()


def set_loader_epoch(loader: DataLoader, epoch: int, start_index: int = 0) -> None:
    """Point a loader's dataset and sampler at ``epoch``, skipping ``start_index`` samples.

    Args:
        loader: from :func:`create_loader`.
        epoch: epoch about to start.
        start_index: samples of this epoch already consumed (batches done x batch size).
    """
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.sampler, "set_epoch"):
        if isinstance(loader.sampler, SeededEpochSampler):
            loader.sampler.set_epoch(epoch, start_index)
        else:
            if start_index:
                raise ValueError("start_index needs a SeededEpochSampler")
            loader.sampler.set_epoch(epoch)
