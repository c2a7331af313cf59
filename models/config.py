"""Typed configuration of the segmentation model (built by ``build_model``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


# Measured on real CAMO photographs (README, real_data.py): top-3 with router noise 0.1 beat top-2
# with noise 1.0, whose routing stayed almost random through a short run.
DEFAULT_TOP_K = 3


def default_top_k(num_experts: int) -> int:
    """The top-k used when none is given: ``DEFAULT_TOP_K``, or every expert when there are fewer."""
    return min(DEFAULT_TOP_K, num_experts)


@dataclass
class ModelConfig:
    """Everything ``build_model`` needs; filled from the CLI/YAML by ``train_ultimate.py``.

    Attributes:
        backbone: timm model name, created with ``features_only=True``.
        num_experts: number of experts in the MoE decoder.
        top_k: experts each image is routed to; None routes to ``min(DEFAULT_TOP_K, num_experts)``.
        decoder_channels: width of the FPN fusion and of every expert.
        min_feature_stride: finest encoder stride of the FPN and the experts (8: the stride-4 level
            goes to the detail refinement and a stride-2 level is unused; 4 fuses the stride-4 level
            too: at 64 channels about 1.5x the training time on a CPU; docs/BENCHMARKS.md).
        detail_channels: width of the refinement that brings the decoder output to the finer
            encoder level below ``min_feature_stride`` (a U-Net-style skip); 0 = off, and unused
            for backbones without such a level.
        router_noise: std of the Gaussian noise added to router logits while training (0 = off).
        balance_momentum: momentum of the dispatch-fraction EMA used by the balance loss, so the
            loss stays meaningful at batch size 1.
        deep_supervision: also return one logit map per expert for auxiliary losses.
        side_outputs: also return one logit map per decoder pyramid level (side supervision); off,
            the side heads keep their weights but neither run nor train.
        pretrained: load pretrained encoder weights (timm download or ``pretrained_path``).
        pretrained_path: local weights file for offline use.
    """

    backbone: str = "edgenext_base"
    num_experts: int = 7
    top_k: Optional[int] = None  # None: min(DEFAULT_TOP_K, num_experts)
    decoder_channels: int = 160  # docs/BENCHMARKS.md: at stride 8 wider scored better; 160 trains in the COD peer's time
    min_feature_stride: int = 8
    detail_channels: int = 16
    router_noise: float = 0.1
    balance_momentum: float = 0.9
    deep_supervision: bool = False
    side_outputs: bool = True
    pretrained: bool = True
    pretrained_path: Optional[str] = None

    def __post_init__(self) -> None:
        if self.top_k is None:
            self.top_k = default_top_k(self.num_experts)
