"""The IoU that a prediction ignoring the image can reach: the bar a model must clear to have learnt.

A run whose masks do not belong to its images (shuffled pairs, a renamed folder, masks of another
dataset) still trains: the model learns where objects usually are, its loss falls a little and its
val IoU settles at a value that looks like slow learning. What separates it from a slow healthy run
is that it never beats the best *image-blind* prediction: one fixed mask, the same for every image.

``ImageBlindBaseline`` computes that bar on the validation set itself (an optimistic bar: the fixed
mask is the validation set's own mean mask, at the best threshold, so a model that learnt nothing
from the images cannot beat it). It is computed once per run, from the masks validation reads anyway.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

POOLED_SIZE = 32  # masks are compared at 32 x 32: a fixed mask has no fine detail to lose
# Thresholds of the mean mask; below 0 predicts all foreground, 1 predicts nothing (empty masks score 1).
THRESHOLDS = torch.tensor([-1.0, *torch.linspace(0.05, 0.95, 19).tolist(), 1.0])


class ImageBlindBaseline:
    """Best mean per-image IoU of one fixed mask over the validation set.

    Call ``update`` with every validation batch's masks, then ``compute`` once.

    Args:
        device: where ``compute`` puts the masks of a process that saw none (a DDP rank without a
            validation image still joins the all-reduces).
    """

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self._masks: List[torch.Tensor] = []
        self.device = device

    def update(self, masks: torch.Tensor) -> None:
        """``masks``: ``(B, 1, H, W)`` binary ground truth of one validation batch."""
        pooled = F.adaptive_avg_pool2d((masks > 0.5).float(), POOLED_SIZE) > 0.5
        self._masks.append(pooled.flatten(1))

    def compute(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda totals: totals) -> float:
        """The baseline IoU in [0, 1]; ``all_reduce`` sums tensors over processes under DDP.

        Same IoU convention as ``per_image_scores`` (an empty prediction of an empty mask is 1).
        """
        masks = (torch.cat(self._masks).float() if self._masks
                 else torch.zeros((0, POOLED_SIZE * POOLED_SIZE), device=self.device))  # (N, P)
        count = masks.new_tensor([masks.shape[0]])
        totals = all_reduce(torch.cat([masks.sum(0), count]))
        if totals[-1] == 0:  # no mask on any process: every process returns here
            return float("nan")
        mean_mask = totals[:-1] / totals[-1].clamp_min(1)
        predicted = (mean_mask[None, :] > THRESHOLDS.to(masks.device)[:, None]).float()  # (T, P)
        intersection = masks @ predicted.T  # (N, T)
        union = masks.sum(1, keepdim=True) + predicted.sum(1)[None, :] - intersection
        iou = torch.where(union == 0, torch.ones_like(union), intersection / union.clamp_min(1))
        sums = all_reduce(torch.cat([iou.sum(0), count]))
        return float((sums[:-1] / sums[-1].clamp_min(1)).max())
