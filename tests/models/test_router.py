"""TopKRouter: sparse combine weights, EMA dispatch fractions and a differentiable balance loss."""
from __future__ import annotations

import pytest
import torch

from models.router import TopKRouter


def _features(batch: int, channels: int = 16) -> torch.Tensor:
    return torch.randn(batch, channels, 5, 7)


def test_weights_are_topk_softmax_rows():
    torch.manual_seed(0)
    router = TopKRouter(16, num_experts=5, top_k=2, noise_std=0.0).eval()
    features = _features(4)
    result = router(features)
    assert result.weights.shape == (4, 5)
    assert ((result.weights > 0).sum(dim=1) == 2).all()
    torch.testing.assert_close(result.weights.sum(dim=1), torch.ones(4))
    logits = router.gate(features.mean(dim=(2, 3)))
    top_logits, top_index = logits.topk(2, dim=1)
    torch.testing.assert_close(result.weights.gather(1, top_index), top_logits.softmax(dim=1))


def test_dispatch_fraction_ema_updates_only_in_training():
    torch.manual_seed(0)
    router = TopKRouter(16, num_experts=4, top_k=2, noise_std=0.0, balance_momentum=0.9)
    features = _features(1)
    router.eval()(features)
    torch.testing.assert_close(router.dispatch_fraction, torch.full((4,), 0.25))
    result = router.train()(features)
    selected = (result.weights > 0).float()[0]
    expected = 0.9 * torch.full((4,), 0.25) + 0.1 * selected / 2
    torch.testing.assert_close(router.dispatch_fraction, expected)
    torch.testing.assert_close(result.expert_fractions, expected)
    assert not result.expert_fractions.requires_grad
    router.dispatch_fraction.zero_()  # the returned fractions are a copy, not the buffer
    torch.testing.assert_close(result.expert_fractions, expected)


def test_balance_loss_formula_and_gradient_at_batch_one():
    torch.manual_seed(0)
    router = TopKRouter(16, num_experts=6, top_k=2, noise_std=0.5).train()
    result = router(_features(1))
    # One training step has moved the dispatch EMA away from uniform, so P gets a gradient.
    assert result.balance_loss.requires_grad
    result.balance_loss.backward()
    assert router.gate.weight.grad.abs().sum() > 0
    assert router.gate.bias.grad.abs().sum() > 0


def test_balance_loss_value_matches_switch_formula():
    torch.manual_seed(0)
    router = TopKRouter(16, num_experts=3, top_k=1, noise_std=0.0).eval()
    router.dispatch_fraction.copy_(torch.tensor([0.5, 0.3, 0.2]))
    features = _features(3)
    result = router(features)
    probs = router.gate(features.mean(dim=(2, 3))).softmax(dim=1).mean(dim=0)
    torch.testing.assert_close(result.balance_loss, 3 * (torch.tensor([0.5, 0.3, 0.2]) * probs).sum())


def test_balance_loss_is_one_when_balanced():
    router = TopKRouter(16, num_experts=4, top_k=2).eval()
    assert router(_features(2)).balance_loss.item() == pytest.approx(1.0)


def test_top1_weights_still_carry_router_gradient():
    torch.manual_seed(0)
    router = TopKRouter(16, num_experts=4, top_k=1, noise_std=0.0).eval()
    result = router(_features(2))
    (result.weights * torch.arange(4.0)).sum().backward()
    assert router.gate.weight.grad.abs().sum() > 0


def test_noisy_routing_reaches_every_expert_over_steps():
    torch.manual_seed(0)
    router = TopKRouter(16, num_experts=7, top_k=2, noise_std=1.0).train()
    used = torch.zeros(7, dtype=torch.bool)
    for _ in range(20):
        used |= (router(_features(1)).weights > 0).any(dim=0)
    assert used.all()
    assert (router.dispatch_fraction > 0).all()
    torch.testing.assert_close(router.dispatch_fraction.sum(), torch.tensor(1.0))


def test_noise_only_in_training():
    torch.manual_seed(0)
    router = TopKRouter(16, num_experts=8, top_k=2, noise_std=5.0)
    features = _features(4)
    router.eval()
    torch.testing.assert_close(router(features).weights, router(features).weights)
    router.train()
    assert not torch.equal(router(features).weights, router(features).weights)


def test_forward_has_no_host_sync():
    # Meta tensors hold no data: .item(), .tolist() or data-dependent shapes raise on them.
    router = TopKRouter(16, num_experts=7, top_k=2).to("meta").train()
    result = router(torch.empty(3, 16, 4, 4, device="meta"))
    assert result.weights.shape == (3, 7) and result.balance_loss.shape == ()


@pytest.mark.parametrize("kwargs", [{"top_k": 0}, {"top_k": 5}, {"balance_momentum": 1.0}, {"noise_std": -1.0}])
def test_rejects_bad_settings(kwargs):
    settings = {"channels": 8, "num_experts": 4, **kwargs}
    with pytest.raises(ValueError):
        TopKRouter(**settings)
