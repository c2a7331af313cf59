"""Per-epoch validation metrics (IoU, Dice, MAE), batched on the device.

IoU and Dice are computed per image (prediction thresholded at 0.5) and averaged over images, so
their meaning does not change with the batch size. Convention for an empty ground truth (COD10K's
NonCAM images): an empty prediction scores IoU = Dice = 1 (nothing to find, nothing found), any
predicted foreground scores 0. MAE is the mean absolute error of the probability map.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch


SCORE_NAMES = ("iou", "dice", "mae")  # the keys of per_image_scores


def per_image_scores(probabilities: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> Dict[str, torch.Tensor]:
    """Scores of each image of a batch.

    Args:
        probabilities: ``(B, 1, H, W)`` foreground probabilities in [0, 1].
        masks: ``(B, 1, H, W)`` binary ground truth (0/1).
        threshold: binarisation threshold of the prediction.

    Returns:
        dict of ``(B,)`` tensors: ``iou``, ``dice``, ``mae``.
    """
    predicted = (probabilities > threshold).flatten(1).float()
    target = (masks > 0.5).flatten(1).float()
    intersection = (predicted * target).sum(1)
    predicted_area, target_area = predicted.sum(1), target.sum(1)
    union = predicted_area + target_area - intersection
    both_empty = union == 0
    iou = torch.where(both_empty, torch.ones_like(union), intersection / union.clamp_min(1))
    dice_denominator = predicted_area + target_area
    dice = torch.where(both_empty, torch.ones_like(union), 2 * intersection / dice_denominator.clamp_min(1))
    mae = (probabilities.flatten(1).float() - target).abs().mean(1)
    return {"iou": iou, "dice": dice, "mae": mae}


class MetricAccumulator:
    """Sums per-image scores on the device; ``compute()`` is the only host sync.

    ``keys`` start at zero, so ``totals()`` has the same layout on a process that saw no batch
    (a DDP rank without a validation image all-reduces it like the others).
    """

    def __init__(self, device: torch.device, keys: Sequence[str] = ()):
        self.sums: Dict[str, torch.Tensor] = {}
        self.device = device
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        for key in keys:
            self._add(key, torch.zeros((), dtype=torch.float64, device=device))

    def update(self, scores: Dict[str, torch.Tensor], loss_sum: torch.Tensor = None) -> None:
        """Add a batch of ``(B,)`` scores; ``loss_sum`` is the batch's summed per-image loss."""
        batch = next(iter(scores.values())).shape[0]
        self.count += batch
        for key, values in scores.items():
            self._add(key, values.detach().double().sum())
        if loss_sum is not None:
            self._add("loss", loss_sum.detach().double())

    def _add(self, key: str, value: torch.Tensor) -> None:
        if key not in self.sums:
            self.sums[key] = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sums[key] += value

    def totals(self) -> torch.Tensor:
        """``[count, sum_key1, ...]`` stacked (for an all-reduce), keys in sorted order."""
        return torch.stack([self.count] + [self.sums[key] for key in sorted(self.sums)])

    def compute(self, totals: torch.Tensor = None) -> Dict[str, float]:
        values = (self.totals() if totals is None else totals).tolist()
        count = max(values[0], 1.0)
        return {key: value / count for key, value in zip(sorted(self.sums), values[1:])}
