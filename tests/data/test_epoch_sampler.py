"""SeededEpochSampler: order is a function of (seed, epoch); mid-epoch resume; DDP shards."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from data.loaders import SeededEpochSampler, create_loader, set_loader_epoch


class _IndexDataset(Dataset):
    """Returns its index; records the epoch so set_loader_epoch can be checked."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.epoch = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def _order(seed: int, epoch: int, length: int = 50, start_index: int = 0) -> list[int]:
    sampler = SeededEpochSampler(length, shuffle=True, seed=seed)
    sampler.set_epoch(epoch, start_index)
    return list(sampler)


def test_order_is_a_function_of_seed_and_epoch():
    assert _order(0, 3) == _order(0, 3)
    assert sorted(_order(0, 3)) == list(range(50))
    assert _order(0, 3) != _order(0, 4)
    assert _order(0, 3) != _order(1, 3)
    assert _order(0, 1) != _order(1, 0)  # not simply seed + epoch


def test_start_index_skips_the_consumed_samples():
    sampler = SeededEpochSampler(list(range(50)), shuffle=True, seed=9)
    sampler.set_epoch(2, start_index=20)
    assert list(sampler) == _order(9, 2)[20:] and len(sampler) == 30
    sampler.set_epoch(3)
    assert list(sampler) == _order(9, 3) and len(sampler) == 50
    with pytest.raises(ValueError):
        sampler.set_epoch(3, start_index=51)


def test_no_shuffle_is_sequential():
    sampler = SeededEpochSampler(7, shuffle=False)
    sampler.set_epoch(5, start_index=2)
    assert list(sampler) == [2, 3, 4, 5, 6]


def test_resumed_loader_yields_the_rest_of_the_epoch():
    dataset = _IndexDataset(23)
    loader = create_loader(dataset, batch_size=4, shuffle=True, num_workers=0, seed=1)
    set_loader_epoch(loader, 6)
    full = [batch.tolist() for batch in loader]
    assert dataset.epoch == 6 and len(full) == 6
    resumed = create_loader(_IndexDataset(23), batch_size=4, shuffle=True, num_workers=0, seed=1)
    set_loader_epoch(resumed, 6, start_index=3 * 4)
    assert [batch.tolist() for batch in resumed] == full[3:] and len(resumed) == 3


def test_replicas_partition_the_epoch():
    shards = []
    for rank in range(3):
        sampler = SeededEpochSampler(10, shuffle=True, seed=4, num_replicas=3, rank=rank)
        sampler.set_epoch(1)
        shards.append(list(sampler))
    assert all(len(shard) == 4 for shard in shards)
    assert set().union(*shards) == set(range(10))


def test_drop_last_and_batch_shapes():
    loader = create_loader(_IndexDataset(10), batch_size=4, shuffle=False, num_workers=0, seed=0, drop_last=True)
    batches = list(loader)
    assert [len(batch) for batch in batches] == [4, 4] and torch.equal(batches[0], torch.arange(4))
