"""What the segmentation model returns: logits plus the MoE's auxiliary tensors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch


@dataclass
class SegmentationOutput:
    """Model output.

    Attributes:
        logits: mask logits ``(B, 1, H, W)`` at input resolution.
        balance_loss: scalar MoE load-balancing loss (differentiable w.r.t. the router).
        routing_weights: ``(B, E)`` combine weights (zero for experts not in the top-k).
        expert_fractions: ``(E,)`` detached EMA of the fraction of images dispatched to each expert.
        expert_logits: per-expert logits ``(B, 1, H, W)`` when deep supervision is on, else empty.
        side_logits: one logit map per decoder pyramid level ``(B, 1, H / s_i, W / s_i)`` at the
            level's own stride ``s_i`` (4, 8, 16, 32 for most backbones), shallow -> deep.
    """

    logits: torch.Tensor
    balance_loss: torch.Tensor
    routing_weights: torch.Tensor
    expert_fractions: torch.Tensor
    expert_logits: List[torch.Tensor] = field(default_factory=list)
    side_logits: List[torch.Tensor] = field(default_factory=list)
