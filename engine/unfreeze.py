"""Stage-dependent trainability of the encoder and the one optimizer that spans both stages.

The optimizer is built once over *all* parameters (encoder and decoder groups). Frozen parameters
have ``requires_grad=False`` and therefore no ``.grad``, which AdamW skips: unfreezing never
re-creates the optimizer, so its moments survive every stage change.
"""
from __future__ import annotations

import logging
from typing import List

import torch
from torch import nn

from engine.config import TrainConfig
from engine.stages import StagePlan

logger = logging.getLogger(__name__)


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


def apply_unfreezing(model: nn.Module, plan: StagePlan, epoch_index: int) -> int:
    """Set which encoder stages train in ``epoch_index`` (deepest first); returns trainable params.

    Frozen stages get ``requires_grad=False`` and eval mode, so their norm layers keep their
    running statistics instead of drifting on a frozen network.
    """
    model.train()
    stages: List[List[nn.Module]] = model.encoder.stages()
    unfrozen = plan.unfrozen_encoder_stages(epoch_index, len(stages))
    for position, modules in enumerate(stages):
        trainable = position >= len(stages) - unfrozen
        for module in modules:
            module.requires_grad_(trainable)
            module.train(trainable)
    return count_trainable(model)


def count_trainable(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
