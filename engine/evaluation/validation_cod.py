"""S-measure and weighted F-measure of the validation predictions, for ``--best-metric sm | wfm``.

Scored as ``eval`` scores a test set: each prediction is resized to its ground truth's original
size (read from disk; the synthetic set's masks are their own originals), quantised to 8 bits and
measured by pysodmetrics. The per-image values go into the Trainer's ``MetricAccumulator``, so
they are averaged over images and all-reduced under DDP like IoU, Dice and MAE.
"""
from __future__ import annotations

from typing import Dict

import cv2
import numpy as np
import torch

from data.image_io import read_mask
from engine.evaluation.cod_metrics import to_uint8_map

COD_VALIDATION_METRICS = ("sm", "wfm")


def image_scores(prediction: np.ndarray, ground_truth: np.ndarray) -> Dict[str, float]:
    """``{"sm", "wfm"}`` of one ``(H, W)`` uint8 prediction against its 0/255 ground truth."""
    import py_sod_metrics  # here, not at the top: a run without --best-metric sm / wfm does not need it

    smeasure, weighted_fmeasure = py_sod_metrics.Smeasure(), py_sod_metrics.WeightedFmeasure()
    smeasure.step(pred=prediction, gt=ground_truth)
    weighted_fmeasure.step(pred=prediction, gt=ground_truth)
    return {"sm": float(smeasure.get_results()["sm"]), "wfm": float(weighted_fmeasure.get_results()["wfm"])}


class GroundTruthSizeScores:
    """Per-image S-measure and weighted F of a validation batch at the ground truths' own sizes.

    Args:
        dataset: the validation dataset; samples carry ``index``, and ``dataset.pairs[index].mask``
            (when present) is the original mask file.
    """

    def __init__(self, dataset):
        self.pairs = getattr(dataset, "pairs", None)

    def ground_truth(self, index: int, resized_mask: torch.Tensor) -> np.ndarray:
        if self.pairs is None:
            return (resized_mask[0].cpu().numpy() > 0.5).astype(np.uint8) * np.uint8(255)
        return read_mask(self.pairs[index].mask) * np.uint8(255)

    def __call__(self, probabilities: torch.Tensor, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``probabilities`` ``(B, 1, h, w)`` -> ``{"sm": (B,), "wfm": (B,)}`` on their device.

        One host copy per batch; validation only, never on the training hot path.
        """
        maps = probabilities.detach().float().cpu().numpy()
        rows = []
        for position, index in enumerate(batch["index"].tolist()):
            truth = self.ground_truth(index, batch["mask"][position])
            resized = cv2.resize(maps[position, 0], (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR)
            rows.append(image_scores(to_uint8_map(resized), truth))
        return {key: torch.tensor([row[key] for row in rows], dtype=torch.float64, device=probabilities.device)
                for key in COD_VALIDATION_METRICS}
