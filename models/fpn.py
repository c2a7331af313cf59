"""FPN-style fusion of multi-scale encoder features into one map at the finest level."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from models.layers import ConvNormAct, resize_to


class FeaturePyramidFusion(nn.Module):
    """1x1 laterals -> top-down upsample + add -> 3x3 smoothing -> all levels fused at the finest.

    Works for any number of levels and any channel list, and for inputs whose size is not a
    multiple of the deepest stride (levels are resized to each other's exact size).
    """

    def __init__(self, encoder_channels: Sequence[int], channels: int) -> None:
        """Create the fusion.

        Args:
            encoder_channels: channels of each encoder level, shallow -> deep.
            channels: output width ``D`` (``decoder_channels``).
        """
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in encoder_channels)
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, kernel_size=3) for _ in encoder_channels)
        self.fuse = ConvNormAct(channels * len(encoder_channels), channels, kernel_size=1)

    def forward(self, features: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Fuse.

        Args:
            features: encoder maps, shallow -> deep, ``(B, encoder_channels[i], H_i, W_i)``.

        Returns:
            Fused features ``(B, D, H_0, W_0)`` at the finest level's resolution, and the
            smoothed pyramid levels ``(B, D, H_i, W_i)``, shallow -> deep (for side outputs).
        """
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        top_down = laterals[-1]
        pyramid = [self.smooth[-1](top_down)]
        for level in range(len(laterals) - 2, -1, -1):
            # keep_dtype: under CUDA autocast the sum stays in half precision (not an fp32 map that the
            # smoothing conv would cast back).
            top_down = laterals[level] + resize_to(top_down, laterals[level].shape[-2:], keep_dtype=True)
            pyramid.insert(0, self.smooth[level](top_down))
        size = pyramid[0].shape[-2:]
        upsampled = [resize_to(level_map, size, keep_dtype=True) for level_map in pyramid]
        return self.fuse(torch.cat(upsampled, dim=1)), pyramid
