"""EMA-normalised multi-task loss: each term divided by its own detached, bias-corrected EMA.

``total = sum_i w_i * L_i / max(ema_hat_i, eps)`` with ``ema_hat_i`` the zero-initialised EMA of
``L_i`` divided by ``1 - beta^t`` (so at step 1 every ratio is exactly 1: nothing is inflated).
Equal weights then mean equal contribution, whatever the raw scale of each term.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch
from torch import nn


class LossNormalizer(nn.Module):
    """Combines named scalar loss terms, each scaled by the inverse of its own running magnitude.

    The EMA updates in training mode only, once per call, with finite values only (a NaN/Inf
    term leaves its EMA untouched); everything stays on the device (no host sync). Buffers
    ``ema`` and ``ema_weight`` (``(T,)`` each) are saved in ``state_dict()``.

    Args:
        weights: term name -> weight, e.g. ``{"structure": 1.0, "balance": 0.01}``.
        beta: EMA decay in ``[0, 1)``; the scale follows ~``1 / (1 - beta)`` calls.
        epsilon: floor of the EMA scale, so a term near 0 is not blown up.
    """

    def __init__(self, weights: Mapping[str, float], beta: float = 0.99, epsilon: float = 1e-6):
        super().__init__()
        if not weights:
            raise ValueError("LossNormalizer needs at least one loss term")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"loss normalisation beta must be in [0, 1), got {beta}")
        if epsilon <= 0:
            raise ValueError(f"loss normalisation epsilon must be > 0, got {epsilon}")
        self.names: Sequence[str] = tuple(weights)
        self.beta, self.epsilon = beta, epsilon
        self.register_buffer("weights", torch.tensor([float(weights[name]) for name in self.names]),
                             persistent=False)
        self.register_buffer("ema", torch.zeros(len(self.names)))  # raw (biased) EMA per term
        # EMA of the constant 1 over the same updates: exactly ``1 - beta^t`` in the EMA's own
        # arithmetic, so the step-1 ratio is exactly 1 (a float32 ``beta ** t`` is off by ~1e-5).
        self.register_buffer("ema_weight", torch.zeros(len(self.names)))

    def scales(self) -> torch.Tensor:
        """Bias-corrected EMA per term ``(T,)``, floored at ``epsilon`` (1 for a term never seen)."""
        seen = self.ema_weight > 0
        corrected = torch.where(seen, self.ema / torch.where(seen, self.ema_weight, 1.0), 1.0)
        return corrected.clamp_min(self.epsilon)

    def normalized_terms(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Update the EMAs (training mode) and return ``L_i / scale_i`` as ``(T,)`` (differentiable).

        Args:
            losses: a scalar tensor for every configured term name (extra keys are ignored).
        """
        missing = [name for name in self.names if name not in losses]
        if missing:
            raise KeyError(f"loss normalisation expects terms {list(self.names)}; missing {missing}")
        values = torch.stack([losses[name].float().reshape(()) for name in self.names])  # (T,)
        if self.training:
            with torch.no_grad():
                finite = torch.isfinite(values)
                self.ema.copy_(torch.where(finite, torch.lerp(self.ema, values, 1.0 - self.beta), self.ema))
                ones = torch.ones_like(self.ema_weight)
                self.ema_weight.copy_(torch.where(finite, torch.lerp(self.ema_weight, ones, 1.0 - self.beta),
                                                  self.ema_weight))
        return values / self.scales().detach()

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the normalised terms: a scalar ``()`` to backpropagate."""
        return (self.weights * self.normalized_terms(losses)).sum()

    def extra_repr(self) -> str:
        weights: Dict[str, float] = dict(zip(self.names, self.weights.tolist()))
        return f"weights={weights}, beta={self.beta}, epsilon={self.epsilon}"
