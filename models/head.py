"""Segmentation head: decoder features to one-channel mask logits."""
from __future__ import annotations

import torch
from torch import nn

from models.layers import ConvNormAct


class SegmentationHead(nn.Module):
    """``3x3 ConvNormAct -> 1x1 conv``: ``(B, D, h, w) -> (B, 1, h, w)`` logits."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.refine = ConvNormAct(channels, channels, kernel_size=3)
        self.classifier = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Args: features ``(B, D, h, w)``. Returns: logits ``(B, 1, h, w)``."""
        return self.classifier(self.refine(features))
