"""``build_model``: a ``CamoSegmenter`` from a ``ModelConfig``."""
from __future__ import annotations

import logging

from models.config import ModelConfig
from models.encoder import TimmEncoder
from models.head import SegmentationHead
from models.moe_decoder import MoEDecoder
from models.segmenter import CamoSegmenter

logger = logging.getLogger(__name__)


def _validate(config: ModelConfig) -> None:
    """Raise ``ValueError`` (one line, naming the field) for out-of-range settings."""
    if config.num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {config.num_experts}")
    if not 1 <= config.top_k <= config.num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={config.num_experts}], got {config.top_k}")
    if config.detail_channels < 0:
        raise ValueError(f"detail_channels must be >= 0, got {config.detail_channels}")
    if config.decoder_channels < 1:
        raise ValueError(f"decoder_channels must be >= 1, got {config.decoder_channels}")
    if config.router_noise < 0:
        raise ValueError(f"router_noise must be >= 0, got {config.router_noise}")
    if not 0.0 <= config.balance_momentum < 1.0:
        raise ValueError(f"balance_momentum must be in [0, 1), got {config.balance_momentum}")


def build_model(config: ModelConfig) -> CamoSegmenter:
    """Build the segmenter described by ``config``.

    Args:
        config: model settings (backbone, experts, routing, pretrained weights).

    Returns:
        ``CamoSegmenter`` mapping ``(B, 3, H, W)`` images to a ``SegmentationOutput``.

    Raises:
        UnknownBackboneError: ``config.backbone`` is not a timm model.
        PretrainedWeightsError: pretrained weights were asked for and cannot be had.
        ValueError: an out-of-range setting.
    """
    _validate(config)
    encoder = TimmEncoder(config.backbone, pretrained=config.pretrained, pretrained_path=config.pretrained_path)
    decoder = MoEDecoder(
        encoder.out_channels,
        encoder.reductions,
        channels=config.decoder_channels,
        min_stride=config.min_feature_stride,
        detail_channels=config.detail_channels,
        num_experts=config.num_experts,
        top_k=config.top_k,
        router_noise=config.router_noise,
        balance_momentum=config.balance_momentum,
        deep_supervision=config.deep_supervision,
        side_outputs=config.side_outputs,
    )
    head = SegmentationHead(config.decoder_channels, decoder.detail_in_channels, config.detail_channels)
    model = CamoSegmenter(encoder, decoder, head)
    logger.info(
        "Built %s + MoE decoder (%d experts, top-%d, %d channels): %.2fM parameters",
        config.backbone, config.num_experts, config.top_k, config.decoder_channels,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model
