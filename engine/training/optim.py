"""The one AdamW optimizer of a run, built once over *all* parameters (encoder and decoder groups).

Unfreezing never re-creates it (frozen parameters have no ``.grad`` and AdamW skips them), so its
moments survive every stage change; the Trainer sets each group's LR per update.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with encoder / decoder groups, no weight decay on norms and biases (1-D tensors)."""
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups = {(part, decay): [] for part in ("encoder", "decoder") for decay in (True, False)}
    for parameter in model.parameters():
        part = "encoder" if id(parameter) in encoder_ids else "decoder"
        groups[(part, parameter.ndim > 1)].append(parameter)
    param_groups = [
        {"params": params, "name": part, "weight_decay": config.weight_decay if decay else 0.0}
        for (part, decay), params in groups.items() if params
    ]
    return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
