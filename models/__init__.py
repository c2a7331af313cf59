"""Model package: timm encoder, MoE decoder, head and the ``build_model`` factory."""
from models.config import ModelConfig
from models.encoder import TimmEncoder
from models.errors import PretrainedWeightsError, UnknownBackboneError
from models.experts import EXPERT_REGISTRY, build_experts, expert_kinds
from models.factory import build_model
from models.output import SegmentationOutput
from models.segmenter import CamoSegmenter

__all__ = [
    "CamoSegmenter",
    "EXPERT_REGISTRY",
    "ModelConfig",
    "PretrainedWeightsError",
    "SegmentationOutput",
    "TimmEncoder",
    "UnknownBackboneError",
    "build_experts",
    "build_model",
    "expert_kinds",
]
