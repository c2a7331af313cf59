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

Only pysodmetrics' public API is used (``step`` and ``get_results`` of a metric that saw one image),
never its per-image lists, so a new pysodmetrics that renames its internals changes nothing here.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
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


def image_scores(prediction: np.ndarray, ground_truth: np.ndarray) -> Dict[str, Any]:
    """One image's S-measure, E-measure curve and adaptive value, weighted F-measure and MAE.

    Each is pysodmetrics' public result (``step`` then ``get_results``) of a metric that saw this
    image alone, so no attribute of pysodmetrics beyond its documented API is read.

    Returns:
        ``{"Smeasure", "emCurve" (256 values), "adpEm", "wFmeasure", "MAE"}``.
    """
    import py_sod_metrics  # here, not at the top: training imports this module and needs it only for sm / wfm

    smeasure, emeasure = py_sod_metrics.Smeasure(), py_sod_metrics.Emeasure()
    weighted_fmeasure, mae = py_sod_metrics.WeightedFmeasure(), py_sod_metrics.MAE()
    for metric in (smeasure, emeasure, weighted_fmeasure, mae):
        metric.step(pred=prediction, gt=ground_truth)
    emeasure_results = emeasure.get_results()["em"]
    return {
        "Smeasure": float(smeasure.get_results()["sm"]),
        "emCurve": np.asarray(emeasure_results["curve"], dtype=np.float64),
        "adpEm": float(emeasure_results["adp"]),
        "wFmeasure": float(weighted_fmeasure.get_results()["wfm"]),
        "MAE": float(mae.get_results()["mae"]),
    }


class CODMetrics:
    """Accumulates one dataset's scores image by image; ``results()`` gives the means.

    Every metric is averaged over images (E-measure curves are averaged over images, then their
    mean and max taken), as pysodmetrics and the published COD tables do.
    """

    def __init__(self):
        self.images: List[Dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.images)

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
        self.images.append({**image_scores(prediction, ground_truth), **binary_scores(prediction, ground_truth)})

    def last_image(self) -> Dict[str, float]:
        """Scores of the image stepped last, keyed by :data:`METRIC_NAMES` (a ``--per-image`` row).

        ``meanEm`` / ``maxEm`` are the mean and max of that image's own E-measure curve over the 256
        thresholds; the dataset's ``maxEm`` is the max of the image-averaged curve, so it is not the
        mean of these per-image maxima (the other metrics average exactly).
        """
        if not self.images:
            raise ValueError("no images were scored")
        scores = dict(self.images[-1])
        curve = scores.pop("emCurve")
        scores.update(meanEm=float(curve.mean()), maxEm=float(curve.max()))
        return {name: float(scores[name]) for name in METRIC_NAMES}

    def results(self) -> Dict[str, float]:
        """Mean scores over the images seen, keyed by :data:`METRIC_NAMES`."""
        if not self.images:
            raise ValueError("no images were scored")
        curve = np.mean(np.array([scores["emCurve"] for scores in self.images], dtype=np.float64), axis=0)
        means = {"meanEm": float(curve.mean()), "maxEm": float(curve.max())}
        for name in METRIC_NAMES:
            if name not in means:
                means[name] = float(np.mean(np.array([scores[name] for scores in self.images], dtype=np.float64)))
        return {name: means[name] for name in METRIC_NAMES}
