"""Augmented samples are a pure function of (seed, epoch, index): instances, workers, global RNG."""

from __future__ import annotations

import random

import numpy as np
import torch

from data.dataset import SegmentationDataset
from data.layouts import find_pairs
from data.loaders import create_loader, set_loader_epoch
from data.synthetic import SyntheticCamouflageDataset
from data.transforms import build_train_transform


def _scramble_global_rngs(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _assert_same(first: dict, second: dict) -> None:
    assert first["name"] == second["name"] and first["index"] == second["index"]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])


def test_same_seed_epoch_index_gives_identical_samples(cod10k_tree):
    pairs = find_pairs(cod10k_tree.root, "train", include_noncam=True)
    first = SegmentationDataset(pairs, build_train_transform(64), seed=3)
    second = SegmentationDataset(pairs, build_train_transform(64), seed=3)
    first.set_epoch(2)
    second.set_epoch(2)
    forward = {}
    for index in range(len(pairs)):
        _scramble_global_rngs(index)
        forward[index] = first[index]
    for index in reversed(range(len(pairs))):  # other order, other global RNG state
        _scramble_global_rngs(1000 + index)
        _assert_same(forward[index], second[index])


def test_epoch_and_seed_change_the_augmentation(cod10k_tree):
    pairs = find_pairs(cod10k_tree.root, "train")
    dataset = SegmentationDataset(pairs, build_train_transform(64), seed=0)
    draws = []
    for seed, epoch in [(0, 0), (0, 1), (1, 0)]:
        dataset.seed = seed
        dataset.set_epoch(epoch)
        draws.append(torch.stack([dataset[index]["image"] for index in range(len(dataset))]))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def _epoch_batches(dataset, num_workers: int, epoch: int) -> list[dict]:
    loader = create_loader(dataset, batch_size=3, shuffle=True, num_workers=num_workers, seed=11)
    set_loader_epoch(loader, epoch)
    return list(loader)


def test_worker_count_does_not_change_batches(cod10k_tree):
    pairs = find_pairs(cod10k_tree.root, "train", include_noncam=True)
    dataset = SegmentationDataset(pairs, build_train_transform(64), seed=5)
    in_process = _epoch_batches(dataset, 0, epoch=1)
    with_workers = _epoch_batches(dataset, 2, epoch=1)
    assert len(in_process) == len(with_workers) == 3
    for first, second in zip(in_process, with_workers):
        assert first["name"] == second["name"]
        assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])
        assert first["image"].shape == (len(first["name"]), 3, 64, 64) and first["mask"].shape[1] == 1


def test_synthetic_dataset_determinism_across_workers():
    dataset = SyntheticCamouflageDataset(8, size=64, seed=2, transform=build_train_transform(48), fresh_each_epoch=True)
    twin = SyntheticCamouflageDataset(8, size=64, seed=2, transform=build_train_transform(48), fresh_each_epoch=True)
    twin.set_epoch(3)
    expected = {}
    for index in range(len(twin)):
        sample = twin[index]
        expected[sample["name"]] = sample
    batches = _epoch_batches(dataset, 2, epoch=3)
    for batch in batches:
        for row, name in enumerate(batch["name"]):
            assert torch.equal(batch["image"][row], expected[name]["image"])
            assert torch.equal(batch["mask"][row], expected[name]["mask"])


def test_synthetic_fresh_each_epoch():
    fresh = SyntheticCamouflageDataset(4, size=64, seed=0, fresh_each_epoch=True)
    fixed = SyntheticCamouflageDataset(4, size=64, seed=0, fresh_each_epoch=False)
    names = {}
    for dataset in (fresh, fixed):
        names[dataset is fresh] = []
        for epoch in (0, 1):
            dataset.set_epoch(epoch)
            names[dataset is fresh].append([dataset[index]["name"] for index in range(4)])
    assert names[True][0] != names[True][1] and set(names[True][0]).isdisjoint(names[True][1])
    assert names[False][0] == names[False][1]
    fresh.set_epoch(1)
    fixed.set_epoch(1)
    assert fresh.scene_index(0) == 4 and fixed.scene_index(0) == 0
    sample = fixed[0]
    assert sample["image"].shape == (3, 64, 64) and float(sample["image"].max()) <= 1.0
    assert set(sample["mask"].unique().tolist()) == {0.0, 1.0}
