"""find_pairs on COD10K-v3 trees and test packs, and its one-line DatasetError messages."""

from __future__ import annotations

import logging
import shutil

import pytest

from data.layouts import DatasetError, describe_layout, find_pairs


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_cod10k_train_is_cam_only_by_default(cod10k_tree, caplog):
    root = cod10k_tree.root
    with caplog.at_level(logging.INFO, logger="data.layouts"):
        pairs = find_pairs(root, "train")
    assert [pair.name for pair in pairs] == sorted(cod10k_tree.train_cam)
    assert all(pair.image.stem == pair.mask.stem == pair.name for pair in pairs)
    assert "Found 5 CAM images" in caplog.text and "2 NonCAM skipped" in caplog.text
    assert "--include-noncam" in caplog.text


def test_cod10k_include_noncam(cod10k_tree):
    root = cod10k_tree.root
    train = find_pairs(root, "train", include_noncam=True)
    test = find_pairs(root, "test", include_noncam=True)
    assert [pair.name for pair in train] == sorted(cod10k_tree.train_cam + cod10k_tree.train_noncam)
    assert [pair.name for pair in test] == sorted(cod10k_tree.test_cam + cod10k_tree.test_noncam)
    assert [pair.name for pair in find_pairs(root, "test")] == sorted(cod10k_tree.test_cam)


def test_hidden_and_non_image_files_are_ignored(cod10k_tree):
    root = cod10k_tree.root
    names = [pair.image.name for pair in find_pairs(root, "train", include_noncam=True)]
    assert not any(name.startswith(".") for name in names)


def test_describe_layout(cod10k_tree, test_packs):
    assert describe_layout(cod10k_tree.root) == "cod10k-v3"
    assert describe_layout(test_packs["CAMO"][0]) == "test-pack"


@pytest.mark.parametrize("pack", ["CAMO", "NC4K"])
def test_test_packs_ignore_split(test_packs, pack):
    folder, stems = test_packs[pack]
    train, test = find_pairs(folder, "train"), find_pairs(folder, "test")
    assert train == test
    assert [pair.name for pair in test] == sorted(stems)


@pytest.mark.parametrize(
    ("split_dir", "mask_dir"), [("Train", "GT_Obj"), ("Train", "GT"), ("TrainDataset", "GT_Object")]
)
def test_folder_name_variants(cod10k_tree, tmp_path, split_dir, mask_dir):
    source = cod10k_tree.root
    shutil.copytree(source / "Train" / "Image", tmp_path / split_dir / "Image")
    shutil.copytree(source / "Train" / "GT_Object", tmp_path / split_dir / mask_dir)
    assert [pair.name for pair in find_pairs(tmp_path, "train")] == sorted(cod10k_tree.train_cam)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(tmp_path / "nope")
    message = _one_line_error(excinfo)
    assert "not found" in message and "nope" in message and "--dataset-path" in message


def test_folder_without_any_layout(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(tmp_path, "test")
    message = _one_line_error(excinfo)
    assert "Test" in message and "Imgs + GT" in message


def test_missing_mask_folder(tmp_path):
    (tmp_path / "Train" / "Image").mkdir(parents=True)
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(tmp_path)
    assert "Missing mask folder" in _one_line_error(excinfo)


def test_empty_image_folder(tmp_path):
    (tmp_path / "Imgs").mkdir()
    (tmp_path / "GT").mkdir()
    (tmp_path / "Imgs" / "._ghost.jpg").write_bytes(b"resource fork")
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(tmp_path)
    message = _one_line_error(excinfo)
    assert "No image files" in message and "Imgs" in message


def test_images_without_masks_are_listed(cod10k_tree, tmp_path):
    source = cod10k_tree.root
    shutil.copytree(source / "Train", tmp_path / "Train")
    for stem in cod10k_tree.train_cam[:4]:
        (tmp_path / "Train" / "GT_Object" / f"{stem}.png").unlink()
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(tmp_path)
    message = _one_line_error(excinfo)
    assert "4 of 5 images" in message and "no mask" in message
    assert all(stem in message for stem in sorted(cod10k_tree.train_cam[:4])[:3]) and "..." in message


def test_masks_without_images_are_listed(cod10k_tree, tmp_path):
    source = cod10k_tree.root
    shutil.copytree(source / "Train", tmp_path / "Train")
    (tmp_path / "Train" / "Image" / f"{cod10k_tree.train_cam[0]}.jpg").unlink()
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(tmp_path)
    message = _one_line_error(excinfo)
    assert "1 of 5 masks" in message and cod10k_tree.train_cam[0] in message and "no image" in message


def test_only_noncam_images(tmp_path):
    for folder in ("Imgs", "GT"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "COD10K-NonCAM-5-Background-1-Sky-3.png").write_bytes(b"x")
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(tmp_path)
    assert "--include-noncam" in _one_line_error(excinfo)
    assert len(find_pairs(tmp_path, include_noncam=True)) == 1


def _pack_with_lonely_files(cod10k_tree, tmp_path):
    """A CAMO-like pack: 5 complete pairs, 2 masks without images, 1 image without a mask."""
    shutil.copytree(cod10k_tree.root / "Train" / "Image", tmp_path / "Imgs")
    shutil.copytree(cod10k_tree.root / "Train" / "GT_Object", tmp_path / "GT")
    for stem in cod10k_tree.train_noncam:
        (tmp_path / "Imgs" / f"{stem}.jpg").unlink()
    shutil.copy(tmp_path / "Imgs" / f"{cod10k_tree.train_cam[0]}.jpg", tmp_path / "Imgs" / "camourflage_lonely.jpg")
    return tmp_path


def test_unpaired_error_names_the_skip_flag(cod10k_tree, tmp_path):
    root = _pack_with_lonely_files(cod10k_tree, tmp_path)
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(root, include_noncam=True)
    assert "--skip-unpaired" in _one_line_error(excinfo)


def test_skip_unpaired_keeps_the_complete_pairs_and_says_how_many_were_left_out(cod10k_tree, tmp_path, caplog):
    root = _pack_with_lonely_files(cod10k_tree, tmp_path)
    with caplog.at_level(logging.WARNING, logger="data.layouts"):
        pairs = find_pairs(root, include_noncam=True, skip_unpaired=True)
    assert [pair.name for pair in pairs] == sorted(cod10k_tree.train_cam)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [f"Skipped 2 masks without images and 1 images without masks in {root} (--skip-unpaired)"]


def test_skip_unpaired_without_any_complete_pair(tmp_path):
    for folder, stem in (("Imgs", "a"), ("GT", "b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{stem}.png").write_bytes(b"x")
    with pytest.raises(DatasetError) as excinfo:
        find_pairs(tmp_path, skip_unpaired=True)
    assert "No image" in _one_line_error(excinfo)
