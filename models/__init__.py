"""Model package: timm encoder, MoE decoder, head and the ``build_model`` factory.

Names are imported on first use (PEP 562), so ``models.config`` (plain dataclasses) loads without
torch or timm: ``train_ultimate.py --help`` stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CamoSegmenter": "models.segmenter",
    "EXPERT_REGISTRY": "models.experts",
    "GradCheckpointingError": "models.errors",
    "ModelConfig": "models.config",
    "PretrainedWeightsError": "models.errors",
    "SegmentationOutput": "models.output",
    "TimmEncoder": "models.encoder",
    "UnknownBackboneError": "models.errors",
    "build_experts": "models.experts",
    "build_model": "models.factory",
    "expert_kinds": "models.experts",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return __all__
