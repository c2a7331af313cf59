"""Small building blocks shared by the decoder, the experts and the head (GroupNorm only)."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import ContextManager

import torch
from torch import nn


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm whose group count divides ``channels`` (works for any width, e.g. 7 or 40).

    Batch-statistics-free on purpose: stage 2 trains at batch size 1.

    Args:
        channels: number of channels to normalise.
        max_groups: upper bound on the group count.

    Returns:
        ``nn.GroupNorm`` with ``gcd(channels, max_groups)`` groups.
    """
    groups = math.gcd(channels, max_groups)
    # At least two channels per group: a 1x1 map (deepest level of a small input) would otherwise
    # leave a single value per group, which GroupNorm cannot normalise while training.
    while groups > 1 and channels // groups < 2:
        groups = next(g for g in range(groups - 1, 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    """``Conv2d -> GroupNorm -> ReLU`` with "same" padding; maps ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,  # GroupNorm's affine shift makes a conv bias redundant
            ),
            group_norm(out_channels),
            nn.ReLU(),
        )


def resize_to(tensor: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``(B, C, h, w)`` to ``(B, C, *size)``; a no-op when already that size."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return nn.functional.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)


def autocast_disabled(device_type: str) -> ContextManager:
    """Leave autocast for the enclosed ops when it is on, so they run in their inputs' dtype.

    A no-op when autocast is off, and on devices without autocast (e.g. ``meta``).
    """
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # e.g. the meta device has no autocast
        return nullcontext()
    return torch.autocast(device_type=device_type, enabled=False) if enabled else nullcontext()
