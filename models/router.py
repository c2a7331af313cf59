"""Top-k image-level router with a Switch-style balance loss that works at batch size 1."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from models.layers import autocast_disabled


class RoutingResult(NamedTuple):
    """What the router returns.

    Attributes:
        weights: ``(B, E)`` combine weights: softmax over each image's top-k logits, 0 elsewhere.
        balance_loss: scalar ``E * sum_i f_i * P_i`` (differentiable through ``P``).
        expert_fractions: ``(E,)`` detached copy of the dispatch-fraction EMA ``f``.
    """

    weights: torch.Tensor
    balance_loss: torch.Tensor
    expert_fractions: torch.Tensor


class TopKRouter(nn.Module):
    """Per-image gating on globally pooled features.

    The balance loss is Switch-style ``E * sum_i f_i * P_i``: ``P_i`` is the mean router
    probability of expert ``i`` over the batch (carries the gradient) and ``f_i`` the fraction of
    dispatches going to expert ``i``. A single batch of one image says little about ``f``, so ``f``
    is an EMA over training steps (buffer ``dispatch_fraction``), which keeps the loss meaningful
    at batch size 1. The loss is 1 for perfectly balanced routing and grows to ``E`` at collapse.
    """

    def __init__(
        self,
        channels: int,
        num_experts: int,
        top_k: int = 2,
        noise_std: float = 1.0,
        balance_momentum: float = 0.9,
    ) -> None:
        """Create the router.

        Args:
            channels: channels of the fused features it routes on.
            num_experts: number of experts ``E``.
            top_k: experts selected per image (``1 <= top_k <= E``).
            noise_std: std of the Gaussian noise added to the logits in training mode (0 = off).
            balance_momentum: EMA momentum of the dispatch fractions, in ``[0, 1)``.
        """
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if not 0.0 <= balance_momentum < 1.0:
            raise ValueError(f"balance_momentum must be in [0, 1), got {balance_momentum}")
        if noise_std < 0:
            raise ValueError(f"router noise std must be >= 0, got {noise_std}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.noise_std = noise_std
        self.balance_momentum = balance_momentum
        self.gate = nn.Linear(channels, num_experts)
        nn.init.normal_(self.gate.weight, std=0.02)  # near-uniform routing at the start
        nn.init.zeros_(self.gate.bias)
        self.register_buffer("dispatch_fraction", torch.full((num_experts,), 1.0 / num_experts))

    def forward(self, features: torch.Tensor) -> RoutingResult:
        """Route each image.

        Args:
            features: fused decoder features ``(B, C, H, W)``.

        Returns:
            ``RoutingResult`` with weights ``(B, E)``, scalar balance loss and fractions ``(E,)``.
        """
        pooled = features.float().mean(dim=(2, 3))  # (B, C)
        # Every routing op runs in float32, also under autocast. CUDA autocast would run the gate
        # in fp16/bf16 but return float32 from softmax, and the scatter below refuses the mix;
        # low-precision logits would also blur the near-tied logits top-k picks from (the gate
        # starts near zero) and the balance loss. The gate is a (B, C) x (C, E) product: fp32 is free.
        with autocast_disabled(features.device.type):
            logits = self.gate(pooled)  # (B, E) float32
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        top_logits, top_index = logits.topk(self.top_k, dim=1)
        if self.top_k == 1:
            # A softmax over one logit is constantly 1 and would cut the router off from the
            # segmentation loss; use the full softmax probability instead (as Switch does).
            top_weights = logits.softmax(dim=1).gather(1, top_index)
        else:
            top_weights = top_logits.softmax(dim=1)
        weights = torch.zeros_like(logits).scatter(1, top_index, top_weights)
        if self.training:
            self._update_fractions(top_index)
        # A copy, so a later in-place EMA update cannot invalidate this step's autograd graph.
        fractions = self.dispatch_fraction.detach().clone()
        mean_probability = logits.softmax(dim=1).mean(dim=0)  # P_i, differentiable
        balance_loss = self.num_experts * torch.sum(fractions * mean_probability)
        return RoutingResult(weights, balance_loss, fractions)

    @torch.no_grad()
    def _update_fractions(self, top_index: torch.Tensor) -> None:
        """In-place EMA update of ``dispatch_fraction`` from this batch's selections (no host sync)."""
        dispatched = torch.zeros(
            top_index.shape[0], self.num_experts, device=top_index.device, dtype=self.dispatch_fraction.dtype
        ).scatter_(1, top_index, 1.0)
        batch_fraction = dispatched.mean(dim=0) / self.top_k  # sums to 1 over experts
        self.dispatch_fraction.lerp_(batch_fraction, 1.0 - self.balance_momentum)
