"""Several dataset roots trained on together, and the layouts they come in (CAMO's own download,
SINet-V2's TrainDataset, COD10K-v3, test packs)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.layouts import (LAYOUT_CAMO, DatasetError, describe_layout, find_pairs, find_pairs_in_roots,
                          has_separate_test_split)


def write_pair(image_dir: Path, mask_dir: Path, stem: str, size=(30, 40)):
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(image_dir / f"{stem}.jpg")
    Image.fromarray((rng.random(size) > 0.5).astype(np.uint8) * 255).save(mask_dir / f"{stem}.png")


def camo_download(root: Path, train=("camourflage_00001", "camourflage_00002"), test=("camourflage_01001",)):
    """CAMO as its own download has it: Images/Train, Images/Test and one GT folder for both."""
    for split, stems in (("Train", train), ("Test", test)):
        for stem in stems:
            write_pair(root / "Images" / split, root / "GT", stem)
    return root


def cod10k_root(root: Path, stems=("COD10K-CAM-1-Aquatic-1-BatFish-1", "COD10K-CAM-1-Aquatic-1-BatFish-2")):
    for stem in stems:
        write_pair(root / "Train" / "Image", root / "Train" / "GT_Object", stem)
    write_pair(root / "Test" / "Image", root / "Test" / "GT_Object", "COD10K-CAM-3-Flying-1-Bee-9")
    return root


def test_camo_download_layout_splits_one_gt_folder_by_the_image_folders(tmp_path):
    root = camo_download(tmp_path / "CAMO-V.1.0-CVIU2019")
    assert describe_layout(root) == LAYOUT_CAMO
    assert [pair.name for pair in find_pairs(root, "train")] == ["camourflage_00001", "camourflage_00002"]
    assert [pair.name for pair in find_pairs(root, "test")] == ["camourflage_01001"]  # GT's other masks: not lonely
    assert has_separate_test_split(root)


def test_sinet_v2_train_dataset_is_a_training_root(tmp_path):
    root = tmp_path / "SINet-V2"
    for stem in ("camourflage_00001", "COD10K-CAM-1-Aquatic-1-BatFish-1"):
        write_pair(root / "TrainDataset" / "Imgs", root / "TrainDataset" / "GT", stem)
    assert len(find_pairs(root, "train")) == 2
    assert not has_separate_test_split(root)  # its TestDataset holds several packs, not one split


def test_two_roots_are_read_in_order_with_their_counts(tmp_path, caplog):
    cod, camo = cod10k_root(tmp_path / "COD10K-v3"), camo_download(tmp_path / "CAMO")
    with caplog.at_level("INFO", logger="data.layouts"):
        pairs = find_pairs_in_roots([cod, camo])
    assert [pair.name for pair in pairs] == ["COD10K-CAM-1-Aquatic-1-BatFish-1", "COD10K-CAM-1-Aquatic-1-BatFish-2",
                                             "camourflage_00001", "camourflage_00002"]
    assert sum("Found 2" in record.getMessage() for record in caplog.records) == 2  # one line per root


@pytest.mark.parametrize("case, words", [("twice", "twice"), ("alias", "also as"), ("overlap", "overlap"),
                                         ("missing", "not found")])
def test_bad_root_lists_are_one_line(case, words, tmp_path):
    cod = cod10k_root(tmp_path / "COD10K-v3")
    (tmp_path / "link").symlink_to(cod)
    roots = {"twice": [cod, cod], "alias": [cod, tmp_path / "link"],
             "overlap": [cod, cod10k_root(tmp_path / "copy")], "missing": [cod, tmp_path / "nowhere"]}[case]
    with pytest.raises(DatasetError, match=words) as raised:
        find_pairs_in_roots([str(root) for root in roots])
    assert "\n" not in str(raised.value)
