"""User-facing model construction errors, each with a one-line message naming the fix."""
from __future__ import annotations


class PretrainedWeightsError(RuntimeError):
    """Pretrained encoder weights could not be obtained (offline, missing or unreadable file)."""


class UnknownBackboneError(ValueError):
    """The backbone name is not a timm model."""


class GradCheckpointingError(RuntimeError):
    """``--grad-checkpointing`` cannot be had without dropping gradients (timm too old to checkpoint
    non-reentrantly, ``models.checkpointing``)."""
