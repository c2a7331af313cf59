"""COD metrics of ``eval``: the dataset averages equal pysodmetrics' own accumulation over the same images
(hand-derived and published values: ``test_cod_metrics_by_hand.py``); IoU/Dice follow the per-epoch convention."""
import cv2
import numpy as np
import py_sod_metrics
import pytest
import torch

from engine.evaluation.cod_metrics import METRIC_NAMES, CODMetrics, binary_scores, to_uint8_map
from engine.evaluation.mask_scores import per_image_scores


def blob_mask(height, width, center, axes):
    mask = np.zeros((height, width), np.uint8)
    return cv2.ellipse(mask, center, axes, 15, 0, 360, 255, -1)


@pytest.fixture(scope="module")
def samples():
    """(prediction, ground truth) pairs of odd sizes, one with an empty ground truth."""
    rng = np.random.default_rng(0)
    pairs = []
    for height, width, center, axes in [(37, 53, (20, 18), (12, 8)), (64, 41, (22, 30), (9, 16)),
                                        (29, 70, (40, 15), (20, 6))]:
        gt = blob_mask(height, width, center, axes)
        shifted = np.roll(gt, 3, axis=1).astype(np.float64) / 255
        prediction = to_uint8_map(np.clip(0.7 * shifted + 0.3 * rng.random((height, width)), 0, 1))
        pairs.append((prediction, gt))
    pairs.append((to_uint8_map(0.3 * rng.random((33, 45))), np.zeros((33, 45), np.uint8)))  # NonCAM-like
    return pairs


def test_dataset_means_equal_pysodmetrics_accumulating_the_same_maps(samples):
    metrics = CODMetrics()
    oracle = {"sm": py_sod_metrics.Smeasure(), "em": py_sod_metrics.Emeasure(),
              "wfm": py_sod_metrics.WeightedFmeasure(), "mae": py_sod_metrics.MAE()}
    for prediction, gt in samples:
        metrics.step(prediction, gt)
        for metric in oracle.values():
            metric.step(pred=prediction, gt=gt)
    results = metrics.results()
    em = oracle["em"].get_results()["em"]
    expected = {"Smeasure": oracle["sm"].get_results()["sm"], "meanEm": em["curve"].mean(), "maxEm": em["curve"].max(),
                "adpEm": em["adp"], "wFmeasure": oracle["wfm"].get_results()["wfm"],
                "MAE": oracle["mae"].get_results()["mae"]}
    assert set(results) == set(METRIC_NAMES)
    for key, value in expected.items():
        assert results[key] == pytest.approx(float(value), abs=1e-12), key


def test_last_image_is_that_image_scored_alone(samples):
    metrics = CODMetrics()
    for prediction, gt in samples:
        metrics.step(prediction, gt)
        alone = CODMetrics()
        alone.step(prediction, gt)
        assert metrics.last_image() == alone.results()
    assert len(metrics) == len(samples)


def test_iou_and_dice_are_means_of_per_image_scores_at_half(samples):
    metrics = CODMetrics()
    ious, dices = [], []
    for prediction, gt in samples:
        metrics.step(prediction, gt)
        predicted, target = prediction / 255.0 > 0.5, gt > 128
        union = np.logical_or(predicted, target).sum()
        intersection = np.logical_and(predicted, target).sum()
        ious.append(1.0 if union == 0 else intersection / union)
        total = predicted.sum() + target.sum()
        dices.append(1.0 if total == 0 else 2 * intersection / total)
    assert metrics.results()["IoU"] == pytest.approx(np.mean(ious), abs=1e-6)  # float32 sums
    assert metrics.results()["Dice"] == pytest.approx(np.mean(dices), abs=1e-6)


def test_empty_ground_truth_convention_matches_training_metrics():
    empty = np.zeros((9, 11), np.uint8)
    assert binary_scores(empty, empty) == {"IoU": 1.0, "Dice": 1.0}  # nothing to find, nothing found
    speck = empty.copy()
    speck[4, 5] = 200
    assert binary_scores(speck, empty) == {"IoU": 0.0, "Dice": 0.0}
    per_epoch = per_image_scores(torch.from_numpy(speck / 255.0)[None, None], torch.zeros(1, 1, 9, 11))
    assert float(per_epoch["iou"][0]) == 0.0


def test_uint8_map_matches_predict_pngs_quantisation():
    probabilities = np.array([0.0, 0.2, 0.5, 0.50196, 1.0, 1.2, -0.1])
    assert to_uint8_map(probabilities).tolist() == [0, 51, 128, 128, 255, 255, 0]


def test_bad_inputs_are_refused():
    metrics = CODMetrics()
    with pytest.raises(ValueError, match="differ in size"):
        metrics.step(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))
    with pytest.raises(TypeError):
        metrics.step(np.zeros((4, 5), np.float32), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="no images"):
        metrics.results()
