"""The encoder's LayerNorms keep half precision under CUDA autocast, as the decoder's GroupNorm does.

CUDA's autocast policy runs ``layer_norm`` in fp32 (``autocast_mode.cpp`` lists it with
``group_norm``), so each LayerNorm of a timm encoder (edgenext, convnext, swin, ...) would return an
fp32 map, and the ops after it (the MLP's first Linear casts it back, GELU, the residual branch) save
fp32 copies for the backward pass. CUDA's LayerNorm kernel takes fp16/bf16 input as it is and
accumulates its statistics in fp32, so on a half-precision CUDA input under autocast these run
outside autocast with their weight and bias cast to the input's dtype. Everywhere else (the CPU, an
fp32 input, no autocast) their forward is the original class's, bit for bit.

:func:`keep_layer_norms_half` swaps the class of each ``torch.nn.LayerNorm``, timm ``LayerNorm`` and
timm ``LayerNorm2d`` in a module for the subclass below (same parameters, same state dict); other
norm classes (timm's ``*Fp32`` ones, RMSNorm, BatchNorm) are left as they are. Fake CUDA, stage 2 of
the default recipe (edgenext_base, 384 px, batch 8), saved for backward in fp16 against fp32: the
encoder 0.57x -> 0.53x, the whole step 0.57x -> 0.55x (``tests/models/test_half_precision.py``).
"""
from __future__ import annotations

from typing import Dict, Type

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers import LayerNorm2d as TimmLayerNorm2d
from torch import nn

from models.layers import affine_in_dtype, half_under_cuda_autocast


class _KeepsHalfPrecision:
    """Mixin for a ``nn.LayerNorm`` subclass: the half-precision path, else the base class's forward."""

    channels_first = False  # (B, C, H, W) input normalised over C (timm's LayerNorm2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not half_under_cuda_autocast(x):
            return super().forward(x)
        with torch.autocast(device_type="cuda", enabled=False):
            weight, bias = affine_in_dtype(self, x.dtype)
            if self.channels_first:
                normed = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, weight, bias, self.eps)
                return normed.permute(0, 3, 1, 2)
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class LayerNorm(_KeepsHalfPrecision, nn.LayerNorm):
    """``torch.nn.LayerNorm`` that keeps a half-precision input in half precision under CUDA autocast."""


class HalfTimmLayerNorm(_KeepsHalfPrecision, TimmLayerNorm):
    """timm's ``LayerNorm`` that keeps a half-precision input in half precision under CUDA autocast."""


class HalfTimmLayerNorm2d(_KeepsHalfPrecision, TimmLayerNorm2d):
    """timm's ``LayerNorm2d`` (channels first) that keeps a half-precision input in half precision."""

    channels_first = True


SWAPS: Dict[Type[nn.Module], Type[nn.Module]] = {
    nn.LayerNorm: LayerNorm, TimmLayerNorm: HalfTimmLayerNorm, TimmLayerNorm2d: HalfTimmLayerNorm2d}


def keep_layer_norms_half(module: nn.Module) -> int:
    """Swap the class of every LayerNorm in ``module`` whose class is exactly one of ``SWAPS``' keys
    (a subclass with its own forward is left alone); returns how many were swapped."""
    swapped = 0
    for child in module.modules():
        half_class = SWAPS.get(type(child))
        if half_class is not None:
            child.__class__ = half_class
            swapped += 1
    return swapped
