"""End to end: a run that learns nothing from its images is told so by the health report."""
import json

import torch

from engine.build import build_trainer
from engine.evaluation.mask_prior import ImageBlindBaseline


def test_the_record_carries_the_image_blind_bar_of_the_validation_masks(tiny_config, tmp_path):
    trainer = build_trainer(tiny_config(epochs=1))
    trainer.fit()
    expected = ImageBlindBaseline()
    for batch in trainer.data.batches(trainer.data.val_dataset, 4, 0, shuffle=False, start_sample=0):
        expected.update(batch["mask"])
    trainer.data.close()
    row = json.loads((tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 < row["val_image_blind_iou"] < 1.0
    assert abs(row["val_image_blind_iou"] - expected.compute()) < 1e-9


def test_a_run_stuck_at_its_initial_weights_is_flagged_after_three_epochs(tiny_config, tmp_path):
    torch.manual_seed(0)
    trainer = build_trainer(tiny_config(epochs=3, lr=1e-9, stage2_lr=1e-9, min_lr=1e-10))  # updates change nothing
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    issues = [[issue for issue in row.get("health", {}).get("issues", []) if "no signal" in issue] for row in rows]
    assert [bool(found) for found in issues] == [False, False, True]
    assert rows[-1]["val_iou"] < rows[-1]["val_image_blind_iou"] + 0.02
