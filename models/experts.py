"""Registry of MoE expert kinds; every expert maps ``(B, C, H, W) -> (B, C, H, W)`` for any ``C``."""
from __future__ import annotations

from typing import Callable, Dict, List, Type

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ConvNormAct, autocast_disabled, group_norm, keep_half_precision

EXPERT_REGISTRY: Dict[str, Type["Expert"]] = {}


def register_expert(name: str) -> Callable[[Type["Expert"]], Type["Expert"]]:
    """Class decorator adding an expert kind to ``EXPERT_REGISTRY`` (order = cycling order)."""

    def decorator(cls: Type["Expert"]) -> Type["Expert"]:
        if name in EXPERT_REGISTRY:
            raise ValueError(f"expert kind '{name}' is already registered")
        EXPERT_REGISTRY[name] = cls
        cls.kind = name
        return cls

    return decorator


class Expert(nn.Module):
    """Residual expert: ``x + body(x)``; subclasses define ``body`` for width ``channels``."""

    kind = "base"

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, C, H, W)``. Returns: ``(B, C, H, W)``."""
        return x + self.body(x)


@register_expert("dilated_texture")
class DilatedTextureExpert(Expert):
    """Texture at several scales: depthwise 3x3 convs with dilation 1, 2, 4, mixed by a 1x1 conv."""

    def __init__(self, channels: int, dilations: tuple = (1, 2, 4)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=d, dilation=d, groups=channels) for d in dilations
        )
        self.mix = ConvNormAct(channels * len(dilations), channels, kernel_size=1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([branch(x) for branch in self.branches], dim=1))


class SqueezeExcite(nn.Module):
    """Channel gate ``x * sigmoid(MLP(GAP(x)))``; ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        # SiLU, not ReLU: with few hidden units a dead ReLU would switch the gate off for good.
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


@register_expert("attention")
class AttentionExpert(Expert):
    """Light CBAM-style attention: a separable 3x3 conv re-weighted by channel then spatial attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),  # depthwise: keeps it light
            ConvNormAct(channels, channels, kernel_size=1),
        )
        self.channel_attention = SqueezeExcite(channels)
        self.spatial_gate = nn.Conv2d(2, 1, 7, padding=3)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = self.channel_attention(y)
        pooled = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
        return y * torch.sigmoid(self.spatial_gate(pooled))


@register_expert("depthwise_se")
class DepthwiseSEExpert(Expert):
    """Inverted-residual hybrid: 1x1 expand, depthwise 3x3, squeeze-excite, 1x1 project."""

    def __init__(self, channels: int, expansion: int = 1) -> None:
        super().__init__()
        hidden = channels * expansion
        self.block = nn.Sequential(
            ConvNormAct(channels, hidden, kernel_size=1),
            ConvNormAct(hidden, hidden, kernel_size=3, groups=hidden),
            SqueezeExcite(hidden),
            nn.Conv2d(hidden, channels, 1, bias=False),
            group_norm(channels),
        )

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


@register_expert("frequency")
class FrequencyExpert(Expert):
    """Global filter in the Fourier domain: per-channel complex gain over radial frequency bands.

    The gain is learned on ``num_bands`` radial bands and interpolated to the input's frequency
    grid, so it works at any (odd or even) ``H, W``. The FFT runs in float32 (fp16 FFTs only
    support power-of-two sizes and lose precision), then a 1x1 conv mixes channels.
    """

    def __init__(self, channels: int, num_bands: int = 8) -> None:
        super().__init__()
        gain = torch.zeros(channels, num_bands, 2)
        gain[..., 0] = 1.0  # start as the identity filter (real 1, imaginary 0)
        self.gain = nn.Parameter(gain + 0.02 * torch.randn_like(gain))
        self.mix = ConvNormAct(channels, channels, kernel_size=1)

    def _filter(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Complex gain ``(C, H, W // 2 + 1)`` interpolated linearly between radial bands."""
        fy = torch.fft.fftfreq(height, device=device).abs()[:, None]
        fx = torch.fft.rfftfreq(width, device=device)[None, :]
        radius = torch.sqrt(fy**2 + fx**2) / (0.5**0.5)  # 0 (DC) .. 1 (highest corner frequency)
        position = radius.clamp(0, 1) * (self.gain.shape[1] - 1)
        low = position.floor().long()
        high = (low + 1).clamp(max=self.gain.shape[1] - 1)
        frac = (position - low)[None, :, :, None]
        gain = self.gain.float()
        interpolated = gain[:, low] * (1 - frac) + gain[:, high] * frac  # (C, H, W//2+1, 2)
        return torch.view_as_complex(interpolated.contiguous())

    def body(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        with autocast_disabled(x.device.type):
            spectrum = torch.fft.rfft2(x.float(), norm="ortho")
            filtered = torch.fft.irfft2(spectrum * self._filter(height, width, x.device), s=(height, width), norm="ortho")
        return self.mix(filtered.to(x.dtype))


@register_expert("edge")
class EdgeExpert(Expert):
    """Fixed Sobel-x, Sobel-y and Laplacian kernels per channel, mixed by a learned 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        kernels = torch.stack([sobel_x, sobel_x.t(), laplacian])[:, None]  # (3, 1, 3, 3)
        # Fixed, not learned: a non-persistent buffer moves with .to() and stays out of checkpoints.
        self.register_buffer("kernels", kernels, persistent=False)
        self.mix = ConvNormAct(3 * channels, channels, kernel_size=1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        weight = self.kernels.to(x.dtype).repeat(channels, 1, 1, 1)  # (3C, 1, 3, 3), 3 per channel
        edges = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=channels)
        return self.mix(edges)


@register_expert("pyramid_context")
class PyramidContextExpert(Expert):
    """Pyramid pooling (bins 1, 2, 4): global and regional context broadcast back to every pixel."""

    def __init__(self, channels: int, bins: tuple = (1, 2, 4)) -> None:
        super().__init__()
        hidden = max(channels // 4, 4)
        self.bins = bins
        # No norm in the pooled branches: GroupNorm over a 1x1 map of few channels is degenerate.
        self.reduce = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.SiLU()) for _ in bins)
        self.fuse = ConvNormAct(channels + hidden * len(bins), channels, kernel_size=1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = []
        for bin_count, reduce in zip(self.bins, self.reduce):
            context = reduce(F.adaptive_avg_pool2d(x, bin_count))
            with keep_half_precision(context):  # CUDA autocast would upsample to fp32, and the cat with it
                pooled.append(F.interpolate(context, size=size, mode="bilinear", align_corners=False))
        return self.fuse(torch.cat([x, *pooled], dim=1))


@register_expert("local_contrast")
class LocalContrastExpert(Expert):
    """Local contrast ``x - local_mean(x)`` at 3x3 and 7x7, refined by a depthwise conv and mixed."""

    def __init__(self, channels: int, windows: tuple = (3, 7)) -> None:
        super().__init__()
        self.windows = windows
        self.refine = nn.Conv2d(channels * len(windows), channels * len(windows), 3, padding=1, groups=channels * len(windows))
        self.mix = ConvNormAct(channels * len(windows), channels, kernel_size=1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        contrasts = [
            x - F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False) for k in self.windows
        ]
        return self.mix(self.refine(torch.cat(contrasts, dim=1)))


def expert_kinds() -> List[str]:
    """Registered expert kinds in cycling order."""
    return list(EXPERT_REGISTRY)


def build_experts(num_experts: int, channels: int) -> nn.ModuleList:
    """Build ``num_experts`` experts of width ``channels``, cycling through the registered kinds.

    Args:
        num_experts: number of experts (kinds repeat when larger than the number of kinds).
        channels: input and output channels of every expert.

    Returns:
        ``nn.ModuleList`` of experts, each ``(B, channels, H, W) -> (B, channels, H, W)``.
    """
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    kinds = expert_kinds()
    return nn.ModuleList(EXPERT_REGISTRY[kinds[i % len(kinds)]](channels) for i in range(num_experts))
