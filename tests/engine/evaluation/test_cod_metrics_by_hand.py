"""COD metrics against values worked out by hand from the published definitions, and against a
published MATLAB toolbox run: oracles that do not go through pysodmetrics.

The definitions, as the reference MATLAB code (Fan's CODToolbox) computes them, with N pixels,
the prediction min-max normalised to [0, 1] first (a constant map is left as it is):
- MAE: the mean of |prediction - mask|.
- S-measure (Fan et al. 2017): 0.5 * S_object + 0.5 * S_region, clamped at 0. S_object scores the
  foreground pixels x (mean m, std s) as 2m / (m^2 + 1 + s) and the background pixels the same way
  on 1 - prediction, weighted by the mask's foreground share. S_region splits the image at the
  mask's centroid into four blocks, each scored by SSIM = 4 mx my sxy / ((mx^2 + my^2)(sx + sy)),
  weighted by its area; a block where numerator and denominator are both 0 scores 1. An empty
  mask scores 1 - mean(prediction).
- E-measure (Fan et al. 2018): binarise the prediction, subtract each map's mean, and per pixel
  phi = (2 a b / (a^2 + b^2) + 1)^2 / 4; E = sum(phi) / (N - 1) (the toolbox divides by N - 1, so
  a perfect map scores N / (N - 1)). An empty mask scores the count of predicted background
  pixels / (N - 1). The curve binarises at the 256 levels 255, 254, ..., 0 (``>=``); its mean and
  max are meanEm and maxEm. adpEm binarises at min(2 * mean(prediction), 1).
- Weighted F (Margolin et al. 2014): weighted recall 1 - mean(Ew over the mask) and precision
  TPw / (TPw + FPw) of the Gaussian-smoothed, distance-weighted error Ew; 0 for an empty mask.
- IoU and Dice at 0.5: an empty mask with an empty prediction scores 1 (the project's convention).
"""
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.evaluation.cod_metrics import CODMetrics

EXAMPLE = Path(__file__).parent / "fixtures" / "toolbox_example"


def scores_of(prediction, mask):
    metrics = CODMetrics()
    metrics.step(prediction.astype(np.uint8), mask.astype(np.uint8))
    return metrics.last_image()


def check(scores, expected):
    assert set(scores) == set(expected)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-9), name


def square_mask():
    """A 4x4 object in a 10x10 image (N = 100, foreground share 0.16), 3 pixels from every edge."""
    mask = np.zeros((10, 10))
    mask[3:7, 3:7] = 255
    return mask


def test_a_perfect_map():
    # S: every foreground and background pixel agrees, so S_object = 2 / (1 + 1 + 0) = 1; each
    #    block's SSIM has equal numerator and denominator (or both 0), so S_region = 1; S = 1.
    # E: at levels 255..1 the binary map equals the mask, every phi = 1: E = 100 / 99. At level 0
    #    every pixel is foreground, the demeaned prediction is 0, phi = 1/4: E = 25 / 99.
    #    meanEm = (255 * 100 + 25) / (99 * 256); adpEm thresholds at 0.32: the mask, 100 / 99.
    # wF: no error anywhere, so recall = precision = 1 and wF = 1. MAE 0, IoU = Dice = 1.
    mask = square_mask()
    check(scores_of(mask, mask), {"Smeasure": 1.0, "meanEm": 25525 / 25344, "maxEm": 100 / 99, "adpEm": 100 / 99,
                                  "wFmeasure": 1.0, "MAE": 0.0, "IoU": 1.0, "Dice": 1.0})


def test_an_inverted_map():
    # S: foreground pixels all predict 0 and background pixels 1, so both S_object terms are 0.
    #    The centroid (4.5 rounds to 4) cuts at row/column 5: all four blocks hold object and
    #    background, where prediction = 1 - mask gives sxy = -sx < 0 and a negative SSIM; S clamps to 0.
    # E: at levels 255..1 the binary map is the complement: demeaned values a = 0.16, b = -0.16 on
    #    the background and a = -0.84, b = 0.84 on the object, so 2ab / (a^2 + b^2) = -1 and phi = 0;
    #    level 0 gives 25 / 99 as above. meanEm = 25 / 99 / 256; adpEm thresholds at min(1.68, 1):
    #    the complement again, 0.
    # wF: every pixel is wrong (error 1) and the object lies 3 pixels inside the image, so the 7x7
    #    smoothing keeps error 1 on it: recall 0, TPw 0, wF 0. MAE 1; IoU = Dice = 0.
    mask = square_mask()
    check(scores_of(255 - mask, mask), {"Smeasure": 0.0, "meanEm": 25 / 99 / 256, "maxEm": 25 / 99, "adpEm": 0.0,
                                        "wFmeasure": 0.0, "MAE": 1.0, "IoU": 0.0, "Dice": 0.0})


def test_an_empty_mask():
    # Empty prediction (left unnormalised, all 0): S = 1 - 0 = 1; E counts predicted background:
    #    100 / 99 at levels 255..1, 0 at level 0 (everything foreground), so meanEm = 255/256 * 100/99;
    #    adpEm thresholds at 2 * 0 = 0: everything foreground, 0. wF 0 by convention; MAE 0; the
    #    project's convention gives IoU = Dice = 1.
    empty = np.zeros((10, 10))
    check(scores_of(empty, empty), {"Smeasure": 1.0, "meanEm": 255 / 256 * 100 / 99, "maxEm": 100 / 99,
                                    "adpEm": 0.0, "wFmeasure": 0.0, "MAE": 0.0, "IoU": 1.0, "Dice": 1.0})
    # One false pixel of 200 (normalised to 1): S = 1 - 1/100; E = 99 / 99 = 1 at levels 255..1
    # and 0 at level 0, so meanEm = 255/256; adpEm thresholds at 0.02: 1. MAE 1/100; IoU = Dice = 0.
    speck = empty.copy()
    speck[4, 5] = 200
    check(scores_of(speck, empty), {"Smeasure": 0.99, "meanEm": 255 / 256, "maxEm": 1.0, "adpEm": 1.0,
                                    "wFmeasure": 0.0, "MAE": 0.01, "IoU": 0.0, "Dice": 0.0})


def test_a_one_pixel_object():
    one = np.zeros((10, 10))
    one[4, 4] = 255
    # Found exactly: as the perfect map (a one-pixel region has std 0, so its S_object term is 1).
    check(scores_of(one, one), {"Smeasure": 1.0, "meanEm": 25525 / 25344, "maxEm": 100 / 99, "adpEm": 100 / 99,
                                "wFmeasure": 1.0, "MAE": 0.0, "IoU": 1.0, "Dice": 1.0})
    # Missed (an all-0 prediction, left unnormalised):
    # S_object = 0.01 * 0 (the object pixel predicts 0) + 0.99 * 1 (background, 1 - 0 = 1, std 0).
    # The centroid cuts at row/column 5 into four 5x5 blocks of weight 1/4: the block holding the
    # object has a prediction mean of 0, so its numerator is 0 and its denominator is not: SSIM 0;
    # the other three are 0 against 0: SSIM 1. S_region = 0.75, S = 0.5 * 0.99 + 0.5 * 0.75 = 0.87.
    # E: the demeaned prediction is 0 at every level (a constant binary map), so every phi = 1/4:
    #    E = 25 / 99 across the curve and for adpEm.
    # wF: the one object pixel has error 1 and so does its whole 7x7 neighbourhood after the
    #    nearest-object copy, so the smoothing keeps 1: recall 0, wF 0. MAE 1/100; IoU = Dice = 0.
    check(scores_of(np.zeros((10, 10)), one), {"Smeasure": 0.87, "meanEm": 25 / 99, "maxEm": 25 / 99,
                                               "adpEm": 25 / 99, "wFmeasure": 0.0, "MAE": 0.01, "IoU": 0.0,
                                               "Dice": 0.0})


def test_the_published_matlab_toolbox_run_is_reproduced():
    """PySODMetrics' example pairs and the scores Fan's MATLAB toolbox gives them (fixtures/README.md)."""
    metrics = CODMetrics()
    for name in ("0001", "19", "aerial-1867541__340"):
        mask = cv2.imread(str(EXAMPLE / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        prediction = cv2.imread(str(EXAMPLE / "preds" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        metrics.step(prediction, mask)
    results = metrics.results()
    matlab = {"Smeasure": 0.903, "wFmeasure": 0.558, "MAE": 0.037, "adpEm": 0.941, "meanEm": 0.957, "maxEm": 0.967}
    assert {name: round(results[name], 3) for name in matlab} == matlab
