"""Every registered expert kind: shape-preserving forward/backward at odd widths, no BatchNorm."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.experts import EXPERT_REGISTRY, FrequencyExpert, build_experts, expert_kinds


def test_seven_kinds_registered_in_cycling_order():
    assert expert_kinds() == [
        "dilated_texture", "attention", "depthwise_se", "frequency", "edge", "pyramid_context", "local_contrast",
    ]


@pytest.mark.parametrize("channels", [24, 40, 7])
@pytest.mark.parametrize("kind", expert_kinds())
def test_expert_forward_backward_any_width(kind, channels):
    torch.manual_seed(0)
    expert = EXPERT_REGISTRY[kind](channels)
    x = torch.randn(2, channels, 9, 13, requires_grad=True)  # odd H and W
    y = expert(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in expert.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{kind}.{name} got no gradient"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in expert.modules())


def test_build_experts_cycles_kinds():
    experts = build_experts(9, 8)
    kinds = expert_kinds()
    assert [e.kind for e in experts] == kinds + kinds[:2]


def test_build_experts_rejects_zero():
    with pytest.raises(ValueError, match="num_experts"):
        build_experts(0, 8)


def test_frequency_expert_under_bfloat16_autocast():
    expert = FrequencyExpert(8)
    x = torch.randn(1, 8, 7, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = expert(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_frequency_expert_starts_near_identity_filter():
    """As constructed (no weights touched): every band's complex gain is 1 + N(0, 0.02) noise, so the
    Fourier filter passes an input almost unchanged. With orthonormal FFTs (Parseval) the relative
    change is at most the largest |gain - 1|, here below 0.1; it is not exactly 0 (the noise breaks
    the symmetry between experts)."""
    for seed in range(3):
        torch.manual_seed(seed)
        expert = FrequencyExpert(4)
        gain = torch.view_as_complex(expert.gain.detach().contiguous())  # (channels, bands)
        assert gain.shape == (4, 8) and float((gain - 1).abs().max()) < 0.1
        x = torch.randn(1, 4, 7, 10)
        with torch.no_grad():
            spectrum = torch.fft.rfft2(x, norm="ortho")
            filtered = torch.fft.irfft2(spectrum * expert._filter(7, 10, x.device), s=(7, 10), norm="ortho")
        change = float((filtered - x).norm() / x.norm())
        assert 0 < change <= float((gain - 1).abs().max()) + 1e-6
