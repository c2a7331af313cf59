"""Stage-dependent trainability of the encoder: which stages train in an epoch, deepest first.

Frozen parameters have ``requires_grad=False`` and therefore no ``.grad``, which AdamW skips, so
the one optimizer of ``engine.optim`` spans both stages and its moments survive every change.
"""
from __future__ import annotations

from typing import List

from torch import nn

from engine.stages import StagePlan


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
