"""Evaluate a module and give every submodule its own train/eval mode back afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module.eval()`` inside the block; afterwards each submodule's mode is put back as it was.

    ``module.train(was_training)`` would set *every* submodule to train mode, including the frozen
    encoder stages and the frozen BatchNorm layers that ``apply_unfreezing`` keeps in eval mode.
    """
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training
