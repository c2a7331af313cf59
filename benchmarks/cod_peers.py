"""A COD-specific peer for the field table: SINet-V2's decoder on the recipe's timm encoder.

Written from the description in Fan, Ji, Cheng, Shao, "Concealed Object Detection", IEEE TPAMI 2021
(SINet-V2), section 3; no code of the authors was used. A benchmark peer, not part of the product.

- **Texture-enhanced module (TEM)**, one per encoder level of stride 8, 16 and 32: four parallel
  branches, each starting with a 1x1 convolution to ``channels`` (32 in the paper); branch ``i``
  (``i = 2, 3, 4``) adds the asymmetric pair 1x(2i-1) and (2i-1)x1 (the paper's cheaper stand-in
  for a (2i-1)x(2i-1) kernel) and a 3x3 convolution of dilation 2i-1. The branches are
  concatenated, reduced to ``channels`` by a 3x3 convolution, added to a 1x1 shortcut of the
  input, then ReLU.
- **Neighbour-connection decoder (NCD)**: each level is multiplied element-wise by convolved,
  upsampled copies of its deeper neighbours only (the stride-16 level by the stride-32 one, the
  stride-8 level by both), then the levels are cascaded deep to shallow by concatenation with the
  upsampled deeper result; two convolutions give the coarse map ``C6`` at stride 8.
- **Group-reversal attention (GRA)**, deep to shallow at strides 32, 16, 8: the reverse map
  ``r = 1 - sigmoid(prior)`` of the previous prediction guides the level's TEM features. Three
  blocks with 32, 8 and 1 groups each split the features into ``g`` channel groups, put ``r``
  after every group, convolve back to ``channels`` (added to the features) and update ``r`` by a
  1-channel convolution of the result (added to ``r``). The level's prediction is the prior
  plus the last ``r`` (residual learning).
- Deep supervision: training returns ``[C3, C4, C5, C6]`` at the input size (the paper sums the
  structure loss over the four), evaluation ``C3`` alone.

Convolutions are followed by BatchNorm and (except where the paper adds a residual first) ReLU,
as in the paper. The encoder is timm's ``features_only`` model, as the recipe's.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONTEXT_STRIDES = (8, 16, 32)
GRA_GROUPS = (32, 8, 1)


def conv_bn(in_channels: int, out_channels: int, kernel=3, dilation: int = 1, relu: bool = True) -> nn.Sequential:
    """Convolution (same-size padding for odd kernels, also asymmetric and dilated) + BatchNorm (+ ReLU)."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    padding = tuple(dilation * (k - 1) // 2 for k in kernel)
    layers = [nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
              nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def upsample(tensor: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


class TextureEnhanced(nn.Module):
    """TEM: four branches of growing receptive field, fused and added to a shortcut."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        branches = [conv_bn(in_channels, channels, 1)]
        for index in (2, 3, 4):
            side = 2 * index - 1
            branches.append(nn.Sequential(
                conv_bn(in_channels, channels, 1), conv_bn(channels, channels, (1, side)),
                conv_bn(channels, channels, (side, 1)), conv_bn(channels, channels, 3, dilation=side, relu=False)))
        self.branches = nn.ModuleList(branches)
        self.fuse = conv_bn(4 * channels, channels, 3, relu=False)
        self.shortcut = conv_bn(in_channels, channels, 1, relu=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([branch(features) for branch in self.branches], dim=1))
        return F.relu(fused + self.shortcut(features))


class NeighbourConnectionDecoder(nn.Module):
    """NCD: neighbour multiplications, then a deep-to-shallow cascade of concatenations -> C6."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.deep_to_middle = conv_bn(channels, channels)   # g(up(f5)) for f4
        self.deep_to_shallow = conv_bn(channels, channels)  # g(up(up(f5))) for f3
        self.middle_to_shallow = conv_bn(channels, channels)  # g(up(f4)) for f3
        self.carry_deep = conv_bn(channels, channels)        # the deep level into the middle cascade
        self.merge_middle = conv_bn(2 * channels, 2 * channels)
        self.carry_middle = conv_bn(2 * channels, 2 * channels)
        self.merge_shallow = conv_bn(3 * channels, 3 * channels)
        self.out = nn.Sequential(conv_bn(3 * channels, 3 * channels), nn.Conv2d(3 * channels, 1, 1))

    def forward(self, shallow: torch.Tensor, middle: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        middle_size, shallow_size = middle.shape[-2:], shallow.shape[-2:]
        middle_n = middle * self.deep_to_middle(upsample(deep, middle_size))
        shallow_n = (shallow * self.deep_to_shallow(upsample(deep, shallow_size))
                     * self.middle_to_shallow(upsample(middle, shallow_size)))
        middle_c = self.merge_middle(torch.cat([middle_n, self.carry_deep(upsample(deep, middle_size))], dim=1))
        shallow_c = self.merge_shallow(
            torch.cat([shallow_n, self.carry_middle(upsample(middle_c, shallow_size))], dim=1))
        return self.out(shallow_c)


class GroupReversalBlock(nn.Module):
    """One GRA block: features split into ``groups`` with the reverse map after each, then updates."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        self.groups = groups
        self.mix = conv_bn(channels + groups, channels)
        self.score = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, features: torch.Tensor, reverse: torch.Tensor):
        chunks = features.chunk(self.groups, dim=1)
        interleaved = torch.cat([part for chunk in chunks for part in (chunk, reverse)], dim=1)
        features = features + self.mix(interleaved)
        return features, reverse + self.score(features)


class GroupReversalAttention(nn.Module):
    """GRA at one level: three blocks (32, 8, 1 groups); the prediction is ``prior + r``."""

    def __init__(self, channels: int, groups: Sequence[int] = GRA_GROUPS) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(GroupReversalBlock(channels, count) for count in groups)

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        prior = upsample(prior, features.shape[-2:])
        reverse = 1 - torch.sigmoid(prior)
        for block in self.blocks:
            features, reverse = block(features, reverse)
        return prior + reverse


class SINetV2Decoder(nn.Module):
    """TEM per level -> NCD -> GRA deep to shallow. Input: the stride-8, -16 and -32 maps."""

    def __init__(self, in_channels: Sequence[int], channels: int = 32) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"SINet-V2 decodes three levels (strides 8, 16, 32), got {len(in_channels)}")
        self.texture = nn.ModuleList(TextureEnhanced(count, channels) for count in in_channels)
        self.ncd = NeighbourConnectionDecoder(channels)
        self.reverse = nn.ModuleList(GroupReversalAttention(channels) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor], size) -> List[torch.Tensor]:
        """``[C3, C4, C5, C6]`` logits ``(B, 1, *size)``, the finest (the prediction) first."""
        shallow, middle, deep = (module(level) for module, level in zip(self.texture, features))
        coarse = self.ncd(shallow, middle, deep)                 # C6, stride 8
        c5 = self.reverse[2](deep, coarse)                       # stride 32
        c4 = self.reverse[1](middle, c5)                         # stride 16
        c3 = self.reverse[0](shallow, c4)                        # stride 8
        return [upsample(logits, size) for logits in (c3, c4, c5, coarse)]


class SINetV2Peer(nn.Module):
    """The timm encoder (``features_only``) + ``SINetV2Decoder`` on its stride-8/16/32 levels.

    ``forward`` returns the four deeply supervised maps while training and the prediction alone
    in eval mode, so the plain loop and the evaluation code take it like any other peer.
    """

    def __init__(self, backbone: str, channels: int = 32) -> None:
        super().__init__()
        from models.encoder import TimmEncoder

        self.encoder = TimmEncoder(backbone, pretrained=False)
        self.levels = [self.encoder.reductions.index(stride) for stride in CONTEXT_STRIDES]
        self.decoder = SINetV2Decoder([self.encoder.out_channels[i] for i in self.levels], channels)

    def forward(self, images: torch.Tensor):
        features = self.encoder(images)
        maps = self.decoder([features[i] for i in self.levels], images.shape[-2:])
        return maps if self.training else maps[0]
