"""Non-reentrant gradient checkpointing in the timm encoder, whatever timm version is installed.

Reentrant checkpointing (``torch.utils.checkpoint.checkpoint(..., use_reentrant=True)``) gives the
parameters of a checkpointed segment no gradient when none of the segment's tensor inputs requires
grad. Behind frozen shallow encoder stages (progressive unfreezing) that is every segment: measured with
``tf_efficientnet_lite0``, 99 of 99 trainable encoder tensors got no gradient; silent on one GPU, an
error under DDP. Non-reentrant checkpointing has no such condition.

timm chooses the variant, in two ways by version:

* timm >= 1.0.13: every checkpoint goes through ``timm.models._manipulate.checkpoint`` or
  ``checkpoint_seq``, which read the process-wide switch ``timm.layers.set_reentrant_ckpt`` (off by
  default, on with ``TIMM_REENTRANT_CKPT=1`` or a call). ``non_reentrant_checkpointing()`` turns the
  switch off while the encoder runs and restores it afterwards.
* timm 1.0.9 - 1.0.12: models call ``torch.utils.checkpoint.checkpoint`` without ``use_reentrant``
  (under whatever name they imported it), and torch then warns and runs the reentrant variant.
  ``non_reentrant_checkpointing()`` sets that one function's keyword default to
  ``use_reentrant=False`` while the encoder runs and restores it afterwards. No timm version of this
  range passes ``use_reentrant`` itself, so the default decides every call.

Both are process-wide for the duration of the encoder's forward (checkpointing picks its variant in
forward; backward only follows the choice). ``check_non_reentrant_checkpointing()`` proves the chosen
way on a frozen-input probe through timm's own ``checkpoint_seq`` and refuses in one line, naming the
timm version that works, where it does not hold.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Optional

import timm
import torch
import torch.utils.checkpoint
from torch import nn

from models.errors import GradCheckpointingError

SWITCH_SINCE = "1.0.13"  # the first timm with timm.layers.set_reentrant_ckpt


def _timm_switch():
    """``(use_reentrant_ckpt, set_reentrant_ckpt)`` of this timm, or None before timm 1.0.13."""
    try:
        from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt
    except ImportError:
        return None
    return use_reentrant_ckpt, set_reentrant_ckpt


def _torch_checkpoint_defaults() -> Optional[dict]:
    """The keyword-only defaults of torch's ``checkpoint`` function itself (below any decorator), which
    every alias of it shares; None where they have no ``use_reentrant``."""
    defaults = inspect.unwrap(torch.utils.checkpoint.checkpoint).__kwdefaults__
    return defaults if isinstance(defaults, dict) and "use_reentrant" in defaults else None


@contextlib.contextmanager
def non_reentrant_checkpointing() -> Iterator[None]:
    """While inside, timm's checkpointing is non-reentrant (the module docstring says how); restored on exit."""
    switch = _timm_switch()
    if switch is not None:
        use_reentrant_ckpt, set_reentrant_ckpt = switch
        previous = use_reentrant_ckpt()
        set_reentrant_ckpt(False)
        try:
            yield
        finally:
            set_reentrant_ckpt(previous)
        return
    defaults = _torch_checkpoint_defaults()
    if defaults is None:  # nothing to set: check_non_reentrant_checkpointing() refuses
        yield
        return
    previous = defaults["use_reentrant"]
    defaults["use_reentrant"] = False
    try:
        yield
    finally:
        defaults["use_reentrant"] = previous


def probe_gives_gradients() -> bool:
    """Whether a frozen-input segment checkpointed by timm's ``checkpoint_seq`` inside
    ``non_reentrant_checkpointing()`` gives its parameter a gradient (microseconds on the CPU)."""
    try:
        from timm.models._manipulate import checkpoint_seq
    except ImportError:
        return False
    layer = nn.Linear(1, 1)
    with torch.enable_grad(), non_reentrant_checkpointing():
        output = checkpoint_seq(nn.Sequential(layer), torch.ones(1, 1))  # the input does not require grad
    if output.requires_grad:
        output.sum().backward()
    return layer.weight.grad is not None


def check_non_reentrant_checkpointing() -> None:
    """Raise ``GradCheckpointingError`` (one line) where the encoder cannot checkpoint non-reentrantly."""
    if not probe_gives_gradients():
        raise GradCheckpointingError(
            f"--grad-checkpointing needs non-reentrant checkpointing, which timm {timm.__version__} with "
            f"torch {torch.__version__} cannot be made to use (frozen encoder stages would leave the trainable "
            f"ones without gradients); install timm>={SWITCH_SINCE}, or drop --grad-checkpointing"
        )
