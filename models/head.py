"""Segmentation head: decoder features to one-channel mask logits, refined by a finer encoder map."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from models.detail import DetailRefinement
from models.layers import ConvNormAct


class SegmentationHead(nn.Module):
    """``3x3 ConvNormAct -> 1x1 conv`` logits, then (with a detail level) a residual detail refinement.

    ``(B, D, h, w) -> (B, 1, h, w)``; with ``detail`` ``(B, C_d, H_d, W_d)``: ``-> (B, 1, H_d, W_d)``.
    """

    def __init__(self, channels: int, detail_channels: int = 0, detail_width: int = 16) -> None:
        """Create the head.

        Args:
            channels: decoder width ``D``.
            detail_channels: channels of the finer encoder level (0: no refinement).
            detail_width: width of the refinement branch.
        """
        super().__init__()
        self.refine = ConvNormAct(channels, channels, kernel_size=3)
        self.classifier = nn.Conv2d(channels, 1, kernel_size=1)
        self.detail = DetailRefinement(channels, detail_channels, detail_width) if detail_channels else None

    def forward(self, features: torch.Tensor, detail: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: features ``(B, D, h, w)``, detail ``(B, C_d, H_d, W_d)`` or None. Returns: logits."""
        refined = self.refine(features)
        logits = self.classifier(refined)
        if self.detail is None or detail is None:
            return logits
        return self.detail(refined, logits, detail)
