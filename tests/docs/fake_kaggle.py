"""A fake ``/kaggle/input``: every dataset the README and the guides name, filled with synthetic scenes
in the layout the docs say that dataset has (tests/docs/test_documents_run.py)."""
import shutil
from pathlib import Path

import torch

from data.synthetic import write_synthetic_dataset

COD10K = "cod10k-dataset/COD10K-v3"  # a COD10K-v3 root: Train/ and Test/, Image + GT_Object
CAMO_DOWNLOAD = "camo-dataset/CAMO-V.1.0-CVIU2019"  # CAMO as downloaded: Images/Train, Images/Test, GT
TEST_PACKS = ("camo", "nc4k", "chameleon")  # test packs: Imgs + GT
METHODS = ("cod-maps/SINet-V2", "cod-maps/AINet")  # published maps: <method>/<test set>/<stem>.png
DOCUMENTED_WEIGHTS = ("edgenext-base-weights/pytorch_model.bin", "edgenext_base")  # a downloaded timm state dict


def _renamed_pairs(source: Path, image_dir: Path, mask_dir: Path, stem) -> None:
    """Copy a synthetic COD10K split under new file names (``stem(i)``): roots that share names are refused."""
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(sorted((source / "Image").iterdir())):
        shutil.copy(image, image_dir / f"{stem(index)}{image.suffix}")
        shutil.copy(source / "GT_Object" / f"{image.stem}.png", mask_dir / f"{stem(index)}.png")


def build_inputs(inputs: Path, size: int = 48) -> None:
    cod10k = inputs / COD10K
    write_synthetic_dataset(cod10k, num_train=12, num_test=4, seed=0, size=size)
    other = inputs.parent / f"{inputs.name}-scenes"
    write_synthetic_dataset(other, num_train=8, num_test=4, seed=1, size=size)
    camo = inputs / CAMO_DOWNLOAD
    _renamed_pairs(other / "Train", camo / "Images" / "Train", camo / "GT", lambda i: f"camourflage_{i + 1:05d}")
    _renamed_pairs(other / "Test", camo / "Images" / "Test", camo / "GT", lambda i: f"camourflage_{i + 1001:05d}")
    for pack in TEST_PACKS:
        _renamed_pairs(other / "Test", inputs / pack / "Imgs", inputs / pack / "GT", lambda i: f"{pack}_{i:03d}")
    for method in METHODS:  # a perfect method: its maps are the ground truths
        for pack in TEST_PACKS:
            shutil.copytree(inputs / pack / "GT", inputs / method / pack)
    shutil.rmtree(other)
    path, backbone = DOCUMENTED_WEIGHTS
    import timm

    (inputs / path).parent.mkdir(parents=True)
    torch.save(timm.create_model(backbone, pretrained=False).state_dict(), inputs / path)
