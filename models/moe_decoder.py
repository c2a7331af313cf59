"""Mixture-of-Experts decoder: FPN fusion, a top-k router and batched experts (each on its routed images on a CPU)."""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.experts import build_experts
from models.fpn import FeaturePyramidFusion
from models.router import TopKRouter


class DecoderOutput(NamedTuple):
    """What the decoder returns.

    Attributes:
        features: expert mixture ``(B, D, h, w)`` at the finest context level (stride >= ``min_stride``).
        balance_loss: scalar router balance loss.
        routing_weights: ``(B, E)`` combine weights.
        expert_fractions: ``(E,)`` detached dispatch-fraction EMA.
        expert_logits: per-expert logits ``(B, 1, h, w)`` with deep supervision, else empty.
        side_logits: one logit map per pyramid level ``(B, 1, H_i, W_i)``, shallow -> deep, at
            the level's own resolution (the loss resizes them to the mask).
        detail: the encoder map of the detail level ``(B, C_d, H_d, W_d)`` for the head, or None.
    """

    features: torch.Tensor
    balance_loss: torch.Tensor
    routing_weights: torch.Tensor
    expert_fractions: torch.Tensor
    expert_logits: List[torch.Tensor]
    side_logits: List[torch.Tensor]
    detail: Optional[torch.Tensor]


class MoEDecoder(nn.Module):
    """FPN fusion -> router -> every expert on the whole batch -> routing-weighted sum.

    The FPN, router and experts use the encoder levels of stride >= ``min_stride`` (the
    *context* levels). A finer level (the stride-2 level of EfficientNet/ResNet-style backbones)
    is only handed on to the head's narrow detail refinement: running the FPN and seven experts
    there would cost 4x.
    On a GPU (and under ``torch.compile``) all experts run densely on the batch, with no per-sample
    gather and no host sync; experts outside an image's top-k get weight 0. On a CPU, where the
    experts' arithmetic is the cost and a host sync is free, each expert runs only on the images
    routed to it (``sparse_on_cpu``), e.g. 3 of 7 experts' work per image at top-k 3. Both give the
    same mixture and the same gradients: an expert no image chose still gets its zero gradient, as
    AdamW's moments and DDP (which expects every trainable parameter to get one) see it densely.
    The gradient reaches the router through the combine weights.

    Attributes:
        context_levels: indices of the encoder levels the FPN fuses.
        detail_level: index of the level handed on as ``DecoderOutput.detail``, or None.
        detail_in_channels: channels of that level (0 when there is none).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[int],
        channels: int = 64,
        min_stride: int = 4,
        detail_channels: int = 16,
        num_experts: int = 7,
        top_k: int = 2,
        router_noise: float = 1.0,
        balance_momentum: float = 0.9,
        deep_supervision: bool = False,
        side_outputs: bool = True,
    ) -> None:
        """Create the decoder.

        Args:
            encoder_channels: channels of each encoder level, shallow -> deep.
            reductions: stride of each encoder level, shallow -> deep.
            channels: decoder width ``D`` (fusion and experts).
            min_stride: finest stride of the context levels (the deepest level is always one).
            detail_channels: width of the head's detail refinement at the level just finer than
                the context levels (0 = off: no level is handed on).
            num_experts: number of experts ``E``.
            top_k: experts used per image.
            router_noise: std of the router's training noise.
            balance_momentum: momentum of the router's dispatch-fraction EMA.
            deep_supervision: also predict one logit map per expert (shared 1x1 conv).
            side_outputs: predict one logit map per pyramid level (False: the side heads are
                still built, but neither run nor trained).
        """
        super().__init__()
        if len(encoder_channels) != len(reductions):
            raise ValueError(f"{len(encoder_channels)} encoder channel counts but {len(reductions)} reductions")
        self.context_levels: List[int] = [i for i, r in enumerate(reductions) if r >= min_stride] or [
            len(reductions) - 1]
        finer = self.context_levels[0] - 1
        self.detail_level = finer if finer >= 0 and detail_channels > 0 else None
        context_channels = [encoder_channels[i] for i in self.context_levels]
        self.fusion = FeaturePyramidFusion(context_channels, channels)
        self.router = TopKRouter(channels, num_experts, top_k, router_noise, balance_momentum)
        self.experts = build_experts(num_experts, channels)
        self.expert_head = nn.Conv2d(channels, 1, kernel_size=1) if deep_supervision else None
        # Side outputs for multi-level deep supervision (SINet-V2, ZoomNeXt): a 1x1 conv per
        # pyramid level, always built so the weights file does not depend on the loss settings.
        self.side_heads = nn.ModuleList(nn.Conv2d(channels, 1, kernel_size=1) for _ in context_channels)
        # Without side supervision nothing would reach them in backward; frozen, they stay out of
        # DDP's gradient buckets (DDP fails on a trainable parameter without a gradient).
        self.side_outputs = side_outputs
        self.side_heads.requires_grad_(side_outputs)
        self.detail_in_channels = 0 if self.detail_level is None else encoder_channels[self.detail_level]
        self.grad_checkpointing = False
        self.sparse_on_cpu = True  # False: dense on the CPU too (benchmarks/expert_dispatch.py compares them)

    def monitored_blocks(self) -> List[Tuple[str, nn.Module]]:
        """``(name, module)`` of the fusion convs and the experts (gradient-gain measurement)."""
        blocks = [(f"fusion.smooth.{index}", module) for index, module in enumerate(self.fusion.smooth)]
        blocks.append(("fusion.fuse", self.fusion.fuse))
        return blocks + [(f"experts.{index}", expert) for index, expert in enumerate(self.experts)]

    def forward(self, features: List[torch.Tensor]) -> DecoderOutput:
        """Decode.

        Args:
            features: every encoder map, shallow -> deep, ``(B, C_i, H_i, W_i)``.

        Returns:
            ``DecoderOutput`` with the mixture ``(B, D, h, w)``, the routing tensors and the detail map.
        """
        fused, pyramid = self.fusion([features[i] for i in self.context_levels])
        routing = self.router(fused)
        if self._dispatches_sparsely(fused):
            mixture, expert_outputs = self._routed_mixture(fused, routing.weights), None
        else:
            expert_outputs = torch.stack([self._run_expert(expert, fused) for expert in self.experts], dim=1)
            mixture = torch.einsum("be,bedhw->bdhw", routing.weights.to(expert_outputs.dtype), expert_outputs)
        side_logits = [head(level) for head, level in zip(self.side_heads, pyramid)] if self.side_outputs else []
        return DecoderOutput(
            mixture, routing.balance_loss, routing.weights, routing.expert_fractions,
            self._expert_logits(expert_outputs), side_logits,
            None if self.detail_level is None else features[self.detail_level],
        )

    def _dispatches_sparsely(self, fused: torch.Tensor) -> bool:
        # Per-expert logits need every expert on every image; a compiled graph wants static shapes.
        return (self.sparse_on_cpu and fused.device.type == "cpu" and self.expert_head is None
                and not torch.compiler.is_compiling())

    def _routed_mixture(self, fused: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_e weights[b, e] * expert_e(fused[b])`` over the experts routed to image ``b``.

        Args:
            fused: ``(B, D, h, w)``. weights: ``(B, E)``, zero outside each image's top-k.

        Returns:
            The mixture ``(B, D, h, w)``.
        """
        routed = (weights != 0).cpu()  # no sync on a CPU
        mixture, unused = None, []
        for index, expert in enumerate(self.experts):
            rows = routed[:, index].nonzero().flatten()
            if rows.numel() == 0:
                unused.extend(p for p in expert.parameters() if p.requires_grad)
                continue
            everyone = rows.numel() == fused.shape[0]
            output = self._run_expert(expert, fused if everyone else fused.index_select(0, rows))
            contribution = output * weights[rows, index].to(output.dtype)[:, None, None, None]
            mixture = contribution.new_zeros(fused.shape) if mixture is None else mixture
            mixture = mixture + contribution if everyone else mixture.index_add(0, rows, contribution)
        if unused:  # the zero gradient each would get densely (weight 0 on every image)
            mixture = mixture + 0.0 * sum(parameter.sum() for parameter in unused)
        return mixture

    def _run_expert(self, expert: nn.Module, fused: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Recompute the expert in backward instead of storing its activations (E of them).
            return checkpoint(expert, fused, use_reentrant=False)
        return expert(fused)

    def _expert_logits(self, expert_outputs: torch.Tensor) -> List[torch.Tensor]:
        """Per-expert logits ``E x (B, 1, h, w)`` from ``(B, E, D, h, w)`` (empty without deep supervision)."""
        if self.expert_head is None:
            return []
        batch, num_experts, channels, height, width = expert_outputs.shape
        logits = self.expert_head(expert_outputs.reshape(batch * num_experts, channels, height, width))
        return list(logits.reshape(batch, num_experts, 1, height, width).unbind(dim=1))
