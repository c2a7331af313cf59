"""EMA-normalised multi-task loss: equal contribution, step 1 not inflated, NaN-safe, checkpointable."""
import io

import pandas as pd
import pytest
import torch

from engine.training.loss_normalizer import LossNormalizer


def test_terms_1000x_apart_contribute_equally_after_warmup():
    generator = torch.Generator().manual_seed(0)
    normalizer = LossNormalizer({"structure": 1.0, "balance": 1.0}, beta=0.9)
    for _ in range(100):
        noise = 1 + 0.05 * torch.randn(2, generator=generator)
        terms = normalizer.normalized_terms({"structure": 1000.0 * noise[0], "balance": 1.0 * noise[1]})
    assert terms.tolist() == pytest.approx([1.0, 1.0], abs=0.15)
    structure = torch.tensor(1000.0, requires_grad=True)
    balance = torch.tensor(1.0, requires_grad=True)
    normalizer.eval()  # frozen scales: the gradient shows each term's effective weight
    normalizer({"structure": structure, "balance": balance}).backward()
    assert (structure.grad * structure).item() == pytest.approx((balance.grad * balance).item(), rel=0.1)


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999])
def test_step_one_is_not_inflated(beta):
    normalizer = LossNormalizer({"structure": 1.0, "balance": 0.5}, beta=beta)
    total = normalizer({"structure": torch.tensor(0.7), "balance": torch.tensor(3.0)})
    # zero-init EMA + bias correction: each ratio is 1 (a first-value init divided by 1 - beta gives 100x)
    assert total.item() == pytest.approx(1.5, rel=1e-5)


def test_scale_is_the_pandas_ewm_and_is_detached():
    values = [3.0, 1.0, 2.0, 5.0, 4.0]
    normalizer = LossNormalizer({"only": 1.0}, beta=0.8)
    for value in values:
        loss = torch.tensor(value, requires_grad=True)
        normalizer({"only": loss}).backward()
        expected_scale = pd.Series(values[:values.index(value) + 1]).ewm(alpha=0.2, adjust=True).mean().iloc[-1]
        assert loss.grad.item() == pytest.approx(1.0 / expected_scale, rel=1e-5)


def test_non_finite_term_leaves_the_ema_untouched():
    normalizer = LossNormalizer({"a": 1.0, "b": 1.0}, beta=0.9)
    normalizer({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    before = {key: value.clone() for key, value in normalizer.state_dict().items()}
    normalizer({"a": torch.tensor(float("nan")), "b": torch.tensor(float("inf"))})
    for key, value in normalizer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_epsilon_floor_and_missing_term():
    normalizer = LossNormalizer({"a": 1.0}, beta=0.9, epsilon=1e-3)
    assert normalizer({"a": torch.tensor(0.0)}).item() == 0.0  # 0 / max(0, eps): no NaN
    with pytest.raises(KeyError, match="missing"):
        normalizer({"b": torch.tensor(1.0)})


def test_state_dict_round_trips_with_weights_only():
    first = LossNormalizer({"a": 1.0, "b": 2.0}, beta=0.95)
    for step in range(10):
        first({"a": torch.tensor(1.0 + step), "b": torch.tensor(10.0 - step)})
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = LossNormalizer({"a": 1.0, "b": 2.0}, beta=0.95)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    inputs = {"a": torch.tensor(4.0), "b": torch.tensor(2.5)}
    assert torch.equal(first(inputs), second(inputs))
