"""Stage-dependent trainability of the encoder: which stages train in an epoch, deepest first.

Frozen parameters have ``requires_grad=False`` and therefore no ``.grad``, which AdamW skips, so
the one optimizer of ``engine.training.optim`` spans both stages and its moments survive every change.
"""
from __future__ import annotations

from typing import List

from torch import nn

from engine.training.stages import StagePlan


def apply_unfreezing(model: nn.Module, plan: StagePlan, epoch_index: int) -> int:
    """Set which encoder stages train in ``epoch_index`` (deepest first); returns trainable params.

    Frozen stages get ``requires_grad=False`` and eval mode, so their norm layers keep their
    running statistics instead of drifting on a frozen network. With ``--freeze-encoder-bn`` the
    BatchNorm layers of the trainable stages stay in eval mode too (their affine weights train).
    """
    model.train()
    stages: List[List[nn.Module]] = model.encoder.stages()
    unfrozen = plan.unfrozen_encoder_stages(epoch_index, len(stages))
    for position, modules in enumerate(stages):
        trainable = position >= len(stages) - unfrozen
        for module in modules:
            module.requires_grad_(trainable)
            module.train(trainable)
    if plan.config.freeze_encoder_bn:
        freeze_batch_norm_statistics(model.encoder)
    return count_trainable(model)


def freeze_batch_norm_statistics(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode: it normalises with its running
    (ImageNet) statistics and stops updating them.

    A fine-tuned encoder sees small batches (batch 8 here, batch 1 in the SPEC's stage 2), whose
    statistics are noisy or, at batch 1, meaningless; mmsegmentation's ``norm_eval`` and
    detectron2's ``FrozenBatchNorm2d`` do the same. Measured on real CAMO photographs with the
    Lite0 ImageNet weights: S-measure 0.756 -> 0.782 (README, ``real_data.py``).
    """
    for submodule in module.modules():
        if isinstance(submodule, nn.modules.batchnorm._BatchNorm):
            submodule.eval()


def count_trainable(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
