"""A dataset path that is not a root: the error names the root found one or two levels down or up
(Kaggle's dataset folders, CAMO's ``Images/``), cheaply, and in the words of where the path came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data import root_search
from data.layouts import DatasetError, find_pairs, roots_near
from tests.data.test_multiple_roots import camo_download, cod10k_root


@pytest.fixture
def kaggle_input(tmp_path) -> Path:
    """``/kaggle/input`` as Kaggle mounts public datasets: a folder per dataset, the root one level in."""
    cod10k_root(tmp_path / "input" / "cod10k-dataset" / "COD10K-v3")
    camo_download(tmp_path / "input" / "camo-dataset" / "CAMO-V.1.0-CVIU2019")
    return tmp_path / "input"


def _error(path) -> str:
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(path, "train")
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_parent_folder_names_the_root_inside(kaggle_input):
    given = kaggle_input / "cod10k-dataset"
    message = _error(given)
    assert f"found COD10K-v3/ inside it: pass {given / 'COD10K-v3'} as --dataset-path" in message


def test_camo_images_folder_names_the_camo_root(kaggle_input):
    root = kaggle_input / "camo-dataset" / "CAMO-V.1.0-CVIU2019"
    for given in (root / "Images", root / "Images" / "Train"):
        message = _error(given)
        assert f"dataset root {root} (camo layout): pass it as --dataset-path" in message, message
        assert "Add it" not in message


def test_a_split_image_folder_names_the_cod10k_root_not_the_split(kaggle_input):
    root = kaggle_input / "cod10k-dataset" / "COD10K-v3"
    assert f"dataset root {root} (cod10k-v3 layout)" in _error(root / "Train" / "Image")


def test_two_levels_down_every_root_is_named(kaggle_input):
    message = _error(kaggle_input)
    assert "camo-dataset/CAMO-V.1.0-CVIU2019/, cod10k-dataset/COD10K-v3/ inside it" in message


def test_a_missing_path_is_searched_from_the_folder_above(kaggle_input):
    message = _error(kaggle_input / "cod10k-dataset" / "COD10K-v2")
    assert "not found" in message
    assert f"found COD10K-v3/ in {kaggle_input / 'cod10k-dataset'}: pass" in message


def test_nothing_near_keeps_the_list_of_layouts(tmp_path):
    (tmp_path / "empty" / "inner").mkdir(parents=True)
    message = _error(tmp_path / "empty")
    assert "found" not in message and "Imgs + GT" in message and "Fix --dataset-path" in message


def test_the_search_never_lists_a_big_folder_or_more_than_its_budget(tmp_path, monkeypatch):
    """A folder with many entries (an image folder, a big tree) is not searched; listings are bounded."""
    big = tmp_path / "big"
    for index in range(root_search.SEARCH_ENTRIES + 1):
        (big / f"d{index:03d}" / "x").mkdir(parents=True)
    cod10k_root(big / "d000" / "COD10K-v3")  # two levels down, but under a folder too big to list
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(root_search.os, "scandir", lambda folder: listed.append(folder) or real_scandir(folder))
    assert roots_near(big) == ("", [])
    assert len(listed) <= root_search.SEARCH_LISTINGS
    wide = tmp_path / "wide"
    for index in range(40):
        for inner in range(40):
            (wide / f"a{index}" / f"b{inner}").mkdir(parents=True)
    listed.clear()
    roots_near(wide)
    assert len(listed) <= root_search.SEARCH_LISTINGS


def test_naming_the_origin_replaces_the_flag():
    error = DatasetError("Dataset folder not found: /x; Fix --dataset-path: it must point at a root.")
    assert str(error.naming("dataset_path in configs/a.yaml")) == (
        "Dataset folder not found: /x; Fix dataset_path in configs/a.yaml: it must point at a root.")
    assert error.naming("--dataset-path") is error
