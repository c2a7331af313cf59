"""Small building blocks shared by the decoder, the experts and the head (GroupNorm only).

Half precision under CUDA autocast: CUDA's autocast policy runs ``group_norm`` and bilinear
upsampling in fp32 (torch's ``autocast_mode.cpp`` lists them with ``layer_norm`` among its fp32
ops; the rest of the decoder's ops, pooling, means, activations, keep the input's dtype), so each
``ConvNormAct`` would save an fp32 copy of its conv's output and an fp32 ReLU output for the
backward pass, and each upsampling would write an fp32 map for the next conv to cast back. Their
CUDA kernels take fp16/bf16 input as it is and accumulate in fp32, so ``GroupNorm`` and
``resize_to(..., keep_dtype=True)`` run them outside autocast in the input's half precision
(``keep_half_precision``). Saved for backward, fake CUDA, stage 2 of the default
recipe (edgenext_base, 7 experts, 384 px, batch 8), fp32 -> fp16 with autocast's fp32 GroupNorm and
upsampling -> fp16 with these: decoder + head 0.97 -> 0.80 (0.83x) -> 0.53 GiB (0.55x); the whole
step 3.16 -> 2.08 (0.66x) -> 1.81 GiB (0.57x), and 1.73 GiB (0.55x) once the encoder's LayerNorms do
the same (``models/half_layer_norm.py``). tests/models/test_half_precision.py counts it. On the CPU
and in fp32 nothing changes.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import ContextManager

import torch
import torch.nn.functional as F
from torch import nn

HALF_DTYPES = (torch.float16, torch.bfloat16)


def half_under_cuda_autocast(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a half-precision (fp16/bf16) CUDA tensor met inside CUDA autocast."""
    return tensor.device.type == "cuda" and tensor.dtype in HALF_DTYPES and torch.is_autocast_enabled("cuda")


def keep_half_precision(tensor: torch.Tensor) -> ContextManager:
    """Leave CUDA autocast for the enclosed op when ``half_under_cuda_autocast(tensor)``.

    For ops that CUDA autocast runs in fp32 although their CUDA kernels accept fp16/bf16 input and
    accumulate in fp32 (GroupNorm, bilinear upsampling): outside autocast they return the input's
    dtype. Elsewhere (no autocast, the CPU, an fp32 input) autocast's own policy applies unchanged.
    """
    return torch.autocast(device_type="cuda", enabled=False) if half_under_cuda_autocast(tensor) else nullcontext()


def affine_in_dtype(norm: nn.Module, dtype: torch.dtype) -> tuple:
    """A norm layer's ``(weight, bias)`` cast to ``dtype`` (either may be None): CUDA's norm kernels
    take one dtype for the input and both, so the half-precision paths cast them to the input's."""
    return tuple(None if tensor is None else tensor.to(dtype) for tensor in (norm.weight, norm.bias))


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that keeps a half-precision input in half precision under CUDA autocast.

    There it runs outside autocast with its weight and bias cast to the input's dtype (CUDA's kernel
    takes one dtype for all three). The kernel accumulates the statistics in fp32; its output and
    the statistics it saves for backward are in the input's dtype. Same parameters and state dict as
    ``nn.GroupNorm``; everywhere else (CPU, fp32, no autocast) its forward is ``nn.GroupNorm``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, C, *)``. Returns: ``(B, C, *)``, in ``x``'s dtype under CUDA autocast."""
        if not half_under_cuda_autocast(x):
            return super().forward(x)
        with torch.autocast(device_type="cuda", enabled=False):
            return F.group_norm(x, self.num_groups, *affine_in_dtype(self, x.dtype), self.eps)


def group_norm(channels: int, max_groups: int = 8) -> GroupNorm:
    """``GroupNorm`` whose group count divides ``channels`` (works for any width, e.g. 7 or 40).

    Batch-statistics-free on purpose: stage 2 trains at batch size 1.

    Args:
        channels: number of channels to normalise.
        max_groups: upper bound on the group count.

    Returns:
        ``GroupNorm`` with ``gcd(channels, max_groups)`` groups.
    """
    groups = math.gcd(channels, max_groups)
    # At least two channels per group: a 1x1 map (deepest level of a small input) would otherwise
    # leave a single value per group, which GroupNorm cannot normalise while training.
    while groups > 1 and channels // groups < 2:
        groups = next(g for g in range(groups - 1, 0, -1) if channels % g == 0)
    return GroupNorm(groups, channels)


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


def resize_to(tensor: torch.Tensor, size: torch.Size | tuple[int, int], keep_dtype: bool = False) -> torch.Tensor:
    """Bilinearly resize ``(B, C, h, w)`` to ``(B, C, *size)``; a no-op when already that size.

    Args:
        tensor: the map to resize.
        size: the target ``(H, W)``.
        keep_dtype: under CUDA autocast, return a half-precision input in its dtype (decoder
            features) instead of autocast's fp32 (logits for the loss: the default).
    """
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    with keep_half_precision(tensor) if keep_dtype else nullcontext():
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
