"""Persistent workers: started once, yet every epoch is augmented like with fresh workers."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Dataset

from data.dataset import SegmentationDataset
from data.layouts import find_pairs
from data.loaders import EpochIndex, SeededEpochSampler, create_loader, set_loader_epoch, split_epoch_index
from data.synthetic import SyntheticCamouflageDataset
from data.transforms import build_train_transform


class _WorkerReport(Dataset):
    """Returns (epoch seen by the worker, index, worker pid)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item):
        epoch, index = split_epoch_index(item, self.epoch)
        return torch.tensor([epoch, index, os.getpid()])


def _batches(loader, epoch: int, start: int = 0, limit: int | None = None) -> list[dict]:
    set_loader_epoch(loader, epoch, start)
    batches = []
    for batch in loader:
        batches.append(batch)
        if limit is not None and len(batches) == limit:
            break  # abandon the epoch midway, as a stopped run does
    return batches


def _assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second) > 0
    for left, right in zip(first, second):
        assert left["name"] == right["name"]
        assert torch.equal(left["image"], right["image"]) and torch.equal(left["mask"], right["mask"])


def test_split_epoch_index_accepts_ints_and_tags():
    assert split_epoch_index(7, default_epoch=3) == (3, 7)
    assert split_epoch_index(EpochIndex(5, 2), default_epoch=3) == (5, 2)


def test_tagged_sampler_yields_the_same_order_with_the_epoch():
    plain = SeededEpochSampler(20, shuffle=True, seed=4)
    tagged = SeededEpochSampler(20, shuffle=True, seed=4, tag_epoch=True)
    for sampler in (plain, tagged):
        sampler.set_epoch(6, start_index=3)
    assert list(tagged) == [EpochIndex(6, index) for index in plain]


def test_workers_start_once_and_see_every_epoch():
    loader = create_loader(_WorkerReport(12), batch_size=4, shuffle=True, num_workers=2, seed=0,
                           persistent_workers=True)
    pids = set()
    for epoch in range(3):
        rows = torch.cat(_batches(loader, epoch))
        assert rows[:, 0].eq(epoch).all(), "a persistent worker augmented with a stale epoch"
        assert sorted(rows[:, 1].tolist()) == list(range(12))
        pids.update(rows[:, 2].tolist())
    assert len(pids) == 2, "workers were restarted between epochs"


def test_persistent_loader_matches_fresh_workers_on_files(cod10k_tree):
    pairs = find_pairs(cod10k_tree.root, "train", include_noncam=True)
    persistent = create_loader(SegmentationDataset(pairs, build_train_transform(48), seed=5), batch_size=2,
                               shuffle=True, num_workers=2, seed=3, persistent_workers=True)
    fresh = create_loader(SegmentationDataset(pairs, build_train_transform(48), seed=5), batch_size=2,
                          shuffle=True, num_workers=2, seed=3)
    # Epoch 0 is abandoned after one batch; epoch 1 starts mid-way (a resume); epoch 2 is whole.
    for epoch, start, limit in [(0, 0, 1), (1, 4, None), (2, 0, None)]:
        _assert_same_batches(_batches(persistent, epoch, start, limit), _batches(fresh, epoch, start, limit))


def test_persistent_loader_renders_fresh_synthetic_scenes_each_epoch():
    def make():
        return SyntheticCamouflageDataset(8, size=48, seed=2, transform=build_train_transform(32),
                                          fresh_each_epoch=True)

    persistent = create_loader(make(), batch_size=4, shuffle=True, num_workers=2, seed=0, persistent_workers=True)
    names = []
    for epoch in range(2):
        expected = _batches(create_loader(make(), batch_size=4, shuffle=True, num_workers=0, seed=0), epoch)
        got = _batches(persistent, epoch)
        _assert_same_batches(got, expected)
        names.append({name for batch in got for name in batch["name"]})
    assert not names[0] & names[1], "epoch 1 repeated epoch 0's scenes"


def test_persistent_workers_refuse_an_untagged_sampler():
    sampler = SeededEpochSampler(10, shuffle=True, seed=0)
    with pytest.raises(ValueError, match="tag_epoch"):
        create_loader(_WorkerReport(10), batch_size=2, shuffle=True, num_workers=1, seed=0,
                      epoch_sampler=sampler, persistent_workers=True)
