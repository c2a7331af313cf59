"""The field's COD metrics for ``eval``: S-measure, E-measure, weighted F-measure and MAE from
``pysodmetrics`` itself, plus IoU and Dice at threshold 0.5.

Inputs are what a published table is computed from: the prediction as an 8-bit PNG-like map
(0-255) at the ground truth's original size, and the ground truth as 0/255. ``pysodmetrics``
min-max normalises each prediction map (MATLAB's ``mapminmax``) before S/E/wF/MAE, as the COD
papers' toolboxes do, so eval's MAE can differ slightly from the per-epoch validation MAE.

Empty ground truth (COD10K NonCAM images): IoU and Dice follow the training convention of
``engine.evaluation.mask_scores`` (an empty prediction scores 1, any predicted foreground 0); S-measure, E-measure
and MAE use pysodmetrics' own definitions for an all-background map, and the weighted F-measure of
such an image is 0 (pysodmetrics' convention), which is why the standard protocol scores CAM only.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import py_sod_metrics
import torch

from engine.evaluation.mask_scores import per_image_scores

METRIC_NAMES = ("Smeasure", "meanEm", "maxEm", "adpEm", "wFmeasure", "MAE", "IoU", "Dice")


def to_uint8_map(probabilities: np.ndarray) -> np.ndarray:
    """Quantise a probability map in [0, 1] to 0-255, exactly as ``predict`` writes its PNGs."""
    return np.clip(np.rint(np.asarray(probabilities, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def binary_scores(prediction: np.ndarray, ground_truth: np.ndarray) -> Dict[str, float]:
    """IoU and Dice of one image at threshold 0.5, with the empty-GT convention of ``engine.evaluation.mask_scores``.

    Args:
        prediction: ``(H, W)`` uint8 map, 0-255 (foreground where ``value / 255 > 0.5``).
        ground_truth: ``(H, W)`` uint8 mask, 0/255 (foreground where ``> 128``, as pysodmetrics).

    Returns:
        ``{"IoU": float, "Dice": float}``.
    """
    probabilities = torch.from_numpy(prediction.astype(np.float64) / 255.0)[None, None]
    target = torch.from_numpy((ground_truth > 128).astype(np.float64))[None, None]
    scores = per_image_scores(probabilities, target, threshold=0.5)
    return {"IoU": float(scores["iou"][0]), "Dice": float(scores["dice"][0])}


class CODMetrics:
    """Accumulates one dataset's scores image by image; ``results()`` gives the means.

    Every metric is averaged over images (E-measure curves are averaged over images, then their
    mean and max taken), as pysodmetrics and the published COD tables do.
    """

    def __init__(self):
        self.smeasure = py_sod_metrics.Smeasure()
        self.emeasure = py_sod_metrics.Emeasure()
        self.weighted_fmeasure = py_sod_metrics.WeightedFmeasure()
        self.mae = py_sod_metrics.MAE()
        self.binary: List[Dict[str, float]] = []

    def __len__(self) -> int:
        return len(self.binary)

    def step(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        """Score one image.

        Args:
            prediction: ``(H, W)`` uint8 prediction map, 0-255.
            ground_truth: ``(H, W)`` uint8 mask, 0/255, same size as ``prediction``.
        """
        if prediction.shape != ground_truth.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in size; "
                             "resize the prediction to the ground truth first")
        if prediction.dtype != np.uint8 or ground_truth.dtype != np.uint8:
            raise TypeError("prediction and ground truth must be uint8 maps (0-255)")
        for metric in (self.smeasure, self.emeasure, self.weighted_fmeasure, self.mae):
            metric.step(pred=prediction, gt=ground_truth)
        self.binary.append(binary_scores(prediction, ground_truth))

    def last_image(self) -> Dict[str, float]:
        """Scores of the image stepped last, keyed by :data:`METRIC_NAMES` (a ``--per-image`` row).

        ``meanEm`` / ``maxEm`` are the mean and max of that image's own E-measure curve over the 256
        thresholds; the dataset's ``maxEm`` is the max of the image-averaged curve, so it is not the
        mean of these per-image maxima (the other metrics average exactly).
        """
        if not self.binary:
            raise ValueError("no images were scored")
        curve = np.asarray(self.emeasure.changeable_ems[-1], dtype=np.float64)
        return {
            "Smeasure": float(self.smeasure.sms[-1]),
            "meanEm": float(curve.mean()),
            "maxEm": float(curve.max()),
            "adpEm": float(self.emeasure.adaptive_ems[-1]),
            "wFmeasure": float(self.weighted_fmeasure.weighted_fms[-1]),
            "MAE": float(self.mae.maes[-1]),
            **self.binary[-1],
        }

    def results(self) -> Dict[str, float]:
        """Mean scores over the images seen, keyed by :data:`METRIC_NAMES`."""
        if not self.binary:
            raise ValueError("no images were scored")
        emeasure = self.emeasure.get_results()["em"]
        return {
            "Smeasure": float(self.smeasure.get_results()["sm"]),
            "meanEm": float(emeasure["curve"].mean()),
            "maxEm": float(emeasure["curve"].max()),
            "adpEm": float(emeasure["adp"]),
            "wFmeasure": float(self.weighted_fmeasure.get_results()["wfm"]),
            "MAE": float(self.mae.get_results()["mae"]),
            "IoU": float(np.mean([scores["IoU"] for scores in self.binary])),
            "Dice": float(np.mean([scores["Dice"] for scores in self.binary])),
        }
