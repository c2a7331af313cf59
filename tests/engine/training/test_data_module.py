"""``DataModule.close``: every DataLoader worker process of the run is gone afterwards, checked on the processes."""
from __future__ import annotations

import os
import time

import pytest
import torch
from torch.utils.data import Dataset

from data.loaders import split_epoch_index, stop_workers
from engine.training.data_module import DataModule


class WorkerPids(Dataset):
    """Each sample is the pid of the process that loaded it."""

    def __init__(self, length: int) -> None:
        self.length = length

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item):
        split_epoch_index(item, 0)
        return torch.tensor(os.getpid())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("persistent", [True, False])
def test_close_stops_the_workers_of_kept_loaders_and_of_abandoned_epochs(persistent):
    data = DataModule(WorkerPids(8), WorkerPids(4), num_workers=2, seed=0, description="tiny",
                      persistent_workers=persistent)
    abandoned = data.batches(data.train_dataset, 2, epoch=0, shuffle=True, start_sample=0)
    pids = set(next(abandoned).tolist())  # a stopped run leaves its epoch midway
    whole = data.loader(data.val_dataset, 2, epoch=0, shuffle=False, start_sample=0)
    for batch in whole:  # a whole epoch
        pids.update(batch.tolist())
    assert os.getpid() not in pids and all(alive(pid) for pid in pids if persistent)
    data.close()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if alive(pid)]
    for iterator in (abandoned, whole._iterator):  # workers ignore SIGTERM: left alive they would hang the exit
        stop_workers(iterator)
    assert not survivors, "workers outlived DataModule.close()"
