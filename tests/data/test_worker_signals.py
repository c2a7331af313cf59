"""A group signal that reaches a DataLoader worker before it ignores signals must not kill it."""
from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from data.loaders import _worker_init, stop_signals_blocked

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks only")


class _Numbers(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index])


def _late_worker_init(worker_id: int) -> None:
    time.sleep(0.5)  # widen the window between fork and the worker's own signal set-up
    _worker_init(worker_id)


def _read_after_sigterm_to_workers(fork_guard) -> list:
    loader = DataLoader(_Numbers(), batch_size=2, num_workers=2, worker_init_fn=_late_worker_init)
    with fork_guard():
        iterator = iter(loader)
        for worker in iterator._workers:  # what Kaggle's or docker's group signal does to a young worker
            os.kill(worker.pid, signal.SIGTERM)
    try:
        return [batch.tolist() for batch in iterator]
    finally:
        iterator._shutdown_workers()


def test_workers_forked_with_stop_signals_blocked_survive_an_early_sigterm():
    assert _read_after_sigterm_to_workers(stop_signals_blocked) == [[[0], [1]], [[2], [3]]]
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}  # mask restored


def test_without_the_guard_the_early_sigterm_kills_the_worker():
    """The control: the race that the guard closes is real (so the test above can fail)."""
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        _read_after_sigterm_to_workers(contextlib.nullcontext)
