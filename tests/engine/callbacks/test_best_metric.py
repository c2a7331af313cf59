"""--best-metric: S-measure / weighted F of the validation maps at each mask's own size, and the
checkpoint that each metric picks."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.build import build_trainer
from engine.callbacks.save_checkpoints import epoch_best
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from engine.evaluation.cod_metrics import CODMetrics, to_uint8_map
from engine.evaluation.validation_cod import GroundTruthSizeScores


def test_scores_are_taken_at_each_masks_own_size_like_eval(tmp_path):
    """Against CODMetrics (eval's scorer) on the same map resized to the 40x30 original."""
    import cv2
    from types import SimpleNamespace

    truth = np.zeros((30, 40), np.uint8)
    truth[8:22, 10:30] = 1
    Image.fromarray(truth * 255).save(tmp_path / "mask.png")
    dataset = SimpleNamespace(pairs=[SimpleNamespace(mask=tmp_path / "mask.png")])
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.random((1, 1, 16, 16)).astype(np.float32))
    scores = GroundTruthSizeScores(dataset)(small, {"index": torch.tensor([0]), "mask": torch.zeros(1, 1, 16, 16)})
    reference = CODMetrics()
    resized = cv2.resize(small[0, 0].numpy(), (40, 30), interpolation=cv2.INTER_LINEAR)
    reference.step(to_uint8_map(resized), truth * np.uint8(255))
    results = reference.results()
    assert float(scores["sm"][0]) == pytest.approx(results["Smeasure"], abs=1e-9)
    assert float(scores["wfm"][0]) == pytest.approx(results["wFmeasure"], abs=1e-9)
    perfect = torch.from_numpy(cv2.resize(truth.astype(np.float32), (16, 16)))[None, None]
    assert float(GroundTruthSizeScores(dataset)(perfect, {"index": torch.tensor([0]),
                                                           "mask": torch.zeros(1, 1, 16, 16)})["sm"][0]) > 0.9


@pytest.mark.parametrize("metric", ["sm", "mae"])
def test_the_best_checkpoint_follows_the_chosen_metric(tiny_config, tmp_path, metric):
    trainer = build_trainer(tiny_config(epochs=3, use_ema=True, best_metric=metric))
    trainer.fit()
    folder = tmp_path / "ckpt"
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert all(row["best_metric"] == metric for row in rows)
    if metric == "sm":
        assert all(0.0 <= row["val_sm"] <= 1.0 and 0.0 <= row["val_wfm"] <= 1.0 for row in rows)
        assert all(row["val_sm_ema"] is not None for row in rows)
    expected = max(rows, key=lambda row: (epoch_best(row, metric)[0], -row["epoch"]))  # ties: the first
    best = load_checkpoint(folder / "best_model.pth")
    assert progress(best)["epoch"] == expected["epoch"] and best["best_metric"] == metric
    assert best["best_weights"] == epoch_best(expected, metric)[1]


def test_mae_counts_lower_as_better_and_ema_can_win():
    record = {"val_mae": 0.2, "val_mae_ema": 0.1}
    assert epoch_best(record, "mae") == (-0.1, "ema")
    assert epoch_best({"val_iou": 0.5, "val_iou_ema": 0.4}, "iou") == (0.5, "base")
