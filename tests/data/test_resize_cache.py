"""Resize cache: same tensors as the uncached pipeline, disk entries reused, stale or corrupt rebuilt."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import data.dataset
from data.cache import (CachedSegmentationDataset, base_size_for, build_cache, shrink_to_base)
from data.dataset import SegmentationDataset
from data.layouts import find_pairs
from data.transforms import build_train_transform

IMG_SIZE = 64
BASE_SIZE = 96  # below every fixture image's shorter side, so the shrink step really runs
SEED = 3


@pytest.fixture()
def pairs(cod10k_tree, tmp_path):
    """Training pairs of a private copy of the COD10K tree (tests may rewrite its files)."""
    root = tmp_path / "COD10K-v3"
    shutil.copytree(cod10k_tree.root, root)
    return find_pairs(root, "train", include_noncam=True)


@pytest.fixture()
def read_counter(monkeypatch):
    """Counts image decodes made by the dataset in this process."""
    calls = {"count": 0}
    original = data.dataset.read_image

    def counting_read_image(path):
        calls["count"] += 1
        return original(path)

    monkeypatch.setattr(data.dataset, "read_image", counting_read_image)
    return calls


def make_dataset(pairs, mode, folder=None, base_size=BASE_SIZE):
    cache = build_cache(mode, base_size, folder)
    return CachedSegmentationDataset(pairs, build_train_transform(IMG_SIZE), seed=SEED, cache=cache)


def samples(dataset, epoch):
    dataset.set_epoch(epoch)
    return [dataset[index] for index in range(len(dataset))]


def assert_same_samples(expected, actual):
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert want["name"] == got["name"]
        assert torch.equal(want["image"], got["image"]), want["name"]
        assert torch.equal(want["mask"], got["mask"]), want["name"]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cache_gives_the_uncached_tensors(pairs, tmp_path, mode):
    uncached = make_dataset(pairs, "none")
    cached = make_dataset(pairs, mode, tmp_path / "cache")
    for epoch in (0, 1):
        assert_same_samples(samples(uncached, epoch), samples(cached, epoch))
    assert cached.cache.misses == len(pairs)
    assert cached.cache.hits == len(pairs)
    assert samples(uncached, 0)[0]["image"].shape == (3, IMG_SIZE, IMG_SIZE)


def test_without_a_base_size_the_wrapper_equals_the_plain_dataset(pairs):
    plain = SegmentationDataset(pairs, build_train_transform(IMG_SIZE), seed=SEED)
    assert_same_samples(samples(plain, 2), samples(make_dataset(pairs, "none", base_size=None), 2))


def test_disk_entries_are_reused_by_a_new_dataset(pairs, tmp_path, read_counter):
    first = make_dataset(pairs, "disk", tmp_path / "cache")
    expected = samples(first, 0)
    assert read_counter["count"] == len(pairs)
    assert len(list((tmp_path / "cache").glob("*.rc"))) == len(pairs)
    assert not list((tmp_path / "cache").glob("*.tmp"))

    second = make_dataset(pairs, "disk", tmp_path / "cache")
    assert_same_samples(expected, samples(second, 0))
    assert read_counter["count"] == len(pairs)  # nothing decoded again
    assert (second.cache.hits, second.cache.misses) == (len(pairs), 0)


def test_a_read_only_cache_is_read_and_its_misses_go_to_the_writable_one(pairs, tmp_path, read_counter,
                                                                        read_only_view):
    """A previous Kaggle session's cache comes back read-only: its entries are hits, the rest is
    built into this session's folder, and nothing is written (or attempted) in the read-only one."""
    first = make_dataset(pairs[:-1], "disk", tmp_path / "previous")
    expected = samples(make_dataset(pairs, "none"), 0)
    samples(first, 0)
    previous = read_only_view(tmp_path / "previous")
    decodes = read_counter["count"]
    cache = build_cache("disk", BASE_SIZE, tmp_path / "mine", read_only=[previous])
    dataset = CachedSegmentationDataset(pairs, build_train_transform(IMG_SIZE), seed=SEED, cache=cache)
    assert_same_samples(expected, samples(dataset, 0))
    assert (cache.hits, cache.misses) == (len(pairs) - 1, 1)
    assert read_counter["count"] == decodes + 1  # only the one image the read-only cache lacked
    assert len(list((tmp_path / "mine").glob("*.rc"))) == 1


def test_a_full_disk_only_stops_the_caching(pairs, tmp_path, monkeypatch, caplog):
    import errno
    import logging

    import data.cache

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data.cache.tempfile, "mkstemp", no_space)
    expected = samples(make_dataset(pairs, "none"), 0)
    cached = make_dataset(pairs, "disk", tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="data.cache"):
        assert_same_samples(expected, samples(cached, 0))
    assert [record.getMessage() for record in caplog.records if "cannot write" in record.getMessage()] == [
        f"Resize cache: cannot write to {tmp_path / 'cache'} (No space left on device); training goes on without "
        "storing new entries"]


def test_a_changed_source_file_invalidates_its_entry(pairs, tmp_path):
    make_dataset(pairs, "disk", tmp_path / "cache").warm(threads=2)
    changed = pairs[0]
    before = os.stat(changed.image)
    image = cv2.imread(str(changed.image))
    cv2.imwrite(str(changed.image), cv2.flip(255 - image, 1))
    # Some file systems keep the old mtime within one tick; push it forward explicitly.
    os.utime(changed.image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))

    cached = make_dataset(pairs, "disk", tmp_path / "cache")
    assert_same_samples(samples(make_dataset(pairs, "none"), 0), samples(cached, 0))
    assert (cached.cache.hits, cached.cache.misses) == (len(pairs) - 1, 1)
    assert len(list((tmp_path / "cache").glob("*.rc"))) == len(pairs)  # rebuilt in place


def test_a_corrupt_or_partial_entry_is_rebuilt(pairs, tmp_path):
    folder = tmp_path / "cache"
    writer = make_dataset(pairs, "disk", folder)
    writer.warm()
    truncated, garbage, overlong, foreign, bad_size = (writer.cache.entry_path(pair) for pair in pairs[:5])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(b"shorter than a header")
    overlong.write_bytes(overlong.read_bytes() + b"\0")
    foreign.write_bytes(b"X" * foreign.stat().st_size)
    header = np.frombuffer(bad_size.read_bytes(), dtype=writer.cache.HEADER, count=1).copy()
    header["height"] = -(2**40)  # a damaged size field with a valid magic and signature
    bad_size.write_bytes(header.tobytes() + bad_size.read_bytes()[header.nbytes:])

    cached = make_dataset(pairs, "disk", folder)
    assert_same_samples(samples(make_dataset(pairs, "none"), 1), samples(cached, 1))
    assert cached.cache.misses == 5
    healed = make_dataset(pairs, "disk", folder)
    samples(healed, 0)
    assert (healed.cache.hits, healed.cache.misses) == (len(pairs), 0)


def test_memory_cache_warmed_in_the_main_process_serves_the_workers(pairs, monkeypatch):
    dataset = make_dataset(pairs, "memory")
    dataset.warm(threads=2)
    expected = samples(make_dataset(pairs, "none"), 0)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache was warm")

    monkeypatch.setattr(data.dataset, "read_image", no_decoding)  # forked workers inherit this
    dataset.set_epoch(0)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    assert_same_samples(expected, list(loader))


def test_shrink_keeps_the_aspect_ratio_and_never_enlarges():
    image, mask = np.zeros((750, 1000, 3), np.uint8), np.ones((750, 1000), np.uint8)
    small_image, small_mask = shrink_to_base(image, mask, 512)
    assert small_image.shape == (512, 683, 3) and small_mask.shape == (512, 683)
    assert set(np.unique(small_mask)) == {1}
    assert shrink_to_base(image, mask, 800)[0] is image
    assert base_size_for(384) == 512 and base_size_for(352) == 480


def test_unknown_mode_and_missing_folder_are_errors():
    with pytest.raises(ValueError, match="choose one of none, memory, disk"):
        build_cache("ram", 96)
    with pytest.raises(ValueError, match="folder"):
        build_cache("disk", 96)
