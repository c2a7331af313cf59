"""Detail refinement: coarse logits corrected at a finer encoder level through a U-Net-style skip."""
from __future__ import annotations

import torch
from torch import nn

from models.layers import ConvNormAct, resize_to


class DetailRefinement(nn.Module):
    """``up(coarse) + correction(features, detail, coarse)`` at the detail level's resolution.

    The FPN and the experts stay at stride >= 4, where COD decoders work; this narrow block is
    the only part at stride 2, so object boundaries can follow real image detail instead of a 4x
    bilinear upsampling, at a small cost (``width`` is 16 by default). The correction's last conv
    starts at zero: at initialisation the output is the upsampled coarse prediction, and the skip
    only adds what it learns. (A first version that predicted from the narrow branch alone learnt
    slower and scored S-measure 0.688 against 0.732 without it on real data.)
    """

    def __init__(self, channels: int, detail_channels: int, width: int) -> None:
        """Create the refinement.

        Args:
            channels: width ``D`` of the head's features.
            detail_channels: channels ``C_d`` of the finer encoder level.
            width: width of the refinement branch.
        """
        super().__init__()
        self.reduce = ConvNormAct(channels, width, kernel_size=1)
        self.lateral = ConvNormAct(detail_channels, width, kernel_size=1)
        self.refine = ConvNormAct(2 * width + 1, width, kernel_size=3)
        self.correction = nn.Conv2d(width, 1, kernel_size=1)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def forward(self, features: torch.Tensor, coarse_logits: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """Refine.

        Args:
            features: head features ``(B, D, h, w)``.
            coarse_logits: logits predicted from them ``(B, 1, h, w)``.
            detail: the finer encoder map ``(B, C_d, H_d, W_d)``.

        Returns:
            Logits ``(B, 1, H_d, W_d)``.
        """
        size = detail.shape[-2:]
        # keep_dtype: half precision under CUDA autocast, like the convs around them.
        coarse = resize_to(coarse_logits, size, keep_dtype=True)
        reduced = resize_to(self.reduce(features), size, keep_dtype=True)
        mixed = torch.cat([reduced, self.lateral(detail), coarse], dim=1)
        return coarse + self.correction(self.refine(mixed))
