"""The camouflaged-object segmenter: timm encoder -> MoE decoder -> head."""
from __future__ import annotations

from typing import List, Tuple

from torch import Tensor, nn

from models.encoder import TimmEncoder
from models.head import SegmentationHead
from models.layers import resize_to
from models.moe_decoder import MoEDecoder
from models.output import SegmentationOutput


class CamoSegmenter(nn.Module):
    """Encoder -> decoder -> head; logits come back at the input resolution.

    Attributes:
        encoder: ``TimmEncoder`` (multi-scale features).
        decoder: ``MoEDecoder`` (FPN fusion + routed experts).
        head: ``SegmentationHead`` (mask logits).
    """

    def __init__(self, encoder: TimmEncoder, decoder: MoEDecoder, head: SegmentationHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory: timm's checkpointing in the encoder (always non-reentrant, so the
        stages behind frozen ones get gradients), per-expert in the decoder.

        Raises:
            GradCheckpointingError: the installed timm cannot checkpoint non-reentrantly (before 1.0.13
                and torch's ``checkpoint`` not adjustable).
        """
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    def monitored_blocks(self) -> List[Tuple[str, nn.Module]]:
        """Tensor-in, tensor-out blocks whose gradient gain the drift monitor measures: the
        encoder's feature-level modules, the decoder's fusion convs and experts, the head's refine."""
        blocks = [(f"encoder.{name}", module) for name, module in self.encoder.feature_modules()]
        blocks += [(f"decoder.{name}", module) for name, module in self.decoder.monitored_blocks()]
        return blocks + [("head.refine", self.head.refine)]

    def forward(self, images: Tensor) -> SegmentationOutput:
        """Segment.

        Args:
            images: normalised images ``(B, 3, H, W)``; any ``H, W`` (not only multiples of 32).

        Returns:
            ``SegmentationOutput`` with logits ``(B, 1, H, W)``, the balance loss, routing weights
            ``(B, E)``, expert fractions ``(E,)``, per-level side logits at their own strides
            and (deep supervision) per-expert logits.
        """
        size = images.shape[-2:]
        decoded = self.decoder(self.encoder(images))
        return SegmentationOutput(
            logits=resize_to(self.head(decoded.features, decoded.detail), size),
            balance_loss=decoded.balance_loss,
            routing_weights=decoded.routing_weights,
            expert_fractions=decoded.expert_fractions,
            expert_logits=[resize_to(logits, size) for logits in decoded.expert_logits],
            side_logits=decoded.side_logits,
        )
