"""Structure loss against a NumPy oracle, reductions, batch invariance and the criterion's keys."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.training.losses import SegmentationCriterion, structure_loss
from models.output import SegmentationOutput


def _numpy_structure_loss(logits: np.ndarray, mask: np.ndarray) -> float:
    """One image ``(H, W)``, written out from the F3Net definition with float64 NumPy."""
    height, width = mask.shape
    padded = np.pad(mask, 15)  # zero padding, divisor always 31 * 31 (count_include_pad)
    pooled = np.empty_like(mask)
    for i in range(height):
        for j in range(width):
            pooled[i, j] = padded[i:i + 31, j:j + 31].sum() / (31 * 31)
    weight = 1 + 5 * np.abs(pooled - mask)
    bce = np.maximum(logits, 0) - logits * mask + np.log1p(np.exp(-np.abs(logits)))
    weighted_bce = (weight * bce).sum() / weight.sum()
    probability = 1 / (1 + np.exp(-logits))
    intersection = (probability * mask * weight).sum()
    union = ((probability + mask) * weight).sum()
    weighted_iou = 1 - (intersection + 1) / (union - intersection + 1)
    return float(weighted_bce + weighted_iou)


@pytest.mark.parametrize("size", [(4, 4), (37, 40)])
def test_matches_numpy_oracle(size):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, *size)) * 2
    masks = np.zeros((2, *size))
    masks[0, 1:3, 1:4] = 1  # a small object
    masks[1] = rng.random(size) > 0.7  # scattered pixels: every weight differs
    expected = [_numpy_structure_loss(logits[i], masks[i]) for i in range(2)]
    per_image = structure_loss(
        torch.tensor(logits, dtype=torch.float64)[:, None], torch.tensor(masks, dtype=torch.float64)[:, None],
        reduction="none",
    )
    np.testing.assert_allclose(per_image.numpy(), expected, rtol=1e-5)


def test_reduction_none_and_mean():
    torch.manual_seed(0)
    logits, mask = torch.randn(3, 1, 16, 16), (torch.rand(3, 1, 16, 16) > 0.5).float()
    per_image = structure_loss(logits, mask, reduction="none")
    assert per_image.shape == (3,)
    torch.testing.assert_close(structure_loss(logits, mask), per_image.mean())
    with pytest.raises(ValueError, match="reduction"):
        structure_loss(logits, mask, reduction="sum")


def test_batch_of_two_equals_mean_of_two_batches_of_one():
    # What makes batch 1 x accumulation 4 equal batch 4 x accumulation 1.
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 24, 24)
    mask = torch.zeros(2, 1, 24, 24)
    mask[0, :, 2:6, 2:6] = 1  # very different foreground areas per image
    mask[1, :, 3:21, 1:23] = 1
    single = [structure_loss(logits[i:i + 1], mask[i:i + 1]) for i in range(2)]
    torch.testing.assert_close(structure_loss(logits, mask), (single[0] + single[1]) / 2)


def test_half_precision_logits_give_float32_loss_and_gradient():
    logits = torch.randn(1, 1, 8, 8).to(torch.bfloat16).requires_grad_()
    loss = structure_loss(logits, torch.ones(1, 1, 8, 8))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        structure_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


def _output(expert_logits=()) -> SegmentationOutput:
    torch.manual_seed(0)
    return SegmentationOutput(
        logits=torch.randn(2, 1, 8, 8, requires_grad=True),
        balance_loss=torch.tensor(1.5, requires_grad=True),
        routing_weights=torch.full((2, 3), 1 / 3),
        expert_fractions=torch.full((3,), 1 / 3),
        expert_logits=list(expert_logits),
    )


def test_criterion_keys_and_total():
    output, mask = _output(), (torch.rand(2, 1, 8, 8) > 0.5).float()
    losses = SegmentationCriterion(moe_loss_weight=0.1)(output, mask)
    assert set(losses) == {"loss", "structure", "balance"}
    torch.testing.assert_close(losses["structure"], structure_loss(output.logits, mask))
    torch.testing.assert_close(losses["loss"], losses["structure"] + 0.1 * 1.5)
    losses["loss"].backward()
    assert output.balance_loss.grad == pytest.approx(0.1)


def test_criterion_deep_supervision():
    experts = [torch.randn(2, 1, 8, 8) for _ in range(3)]
    output, mask = _output(experts), (torch.rand(2, 1, 8, 8) > 0.5).float()
    losses = SegmentationCriterion(moe_loss_weight=0.0, deep_supervision_weight=0.5)(output, mask)
    assert set(losses) == {"loss", "structure", "balance", "deep_supervision"}
    expected = torch.stack([structure_loss(e, mask) for e in experts]).mean()
    torch.testing.assert_close(losses["deep_supervision"], expected)
    torch.testing.assert_close(losses["loss"], losses["structure"] + 0.5 * expected)
    with pytest.raises(ValueError, match="deep_supervision=True"):
        SegmentationCriterion(deep_supervision_weight=0.5)(_output(), mask)


def test_criterion_side_supervision_upsamples_every_level_to_the_mask():
    torch.manual_seed(1)
    side = [torch.randn(2, 1, 4, 4, requires_grad=True), torch.randn(2, 1, 2, 2, requires_grad=True)]
    output, mask = _output(), (torch.rand(2, 1, 8, 8) > 0.5).float()
    output.side_logits = side
    losses = SegmentationCriterion(moe_loss_weight=0.0, side_supervision_weight=0.5)(output, mask)
    upsampled = [torch.nn.functional.interpolate(s, size=(8, 8), mode="bilinear", align_corners=False) for s in side]
    expected = torch.stack([structure_loss(u, mask) for u in upsampled]).mean()
    torch.testing.assert_close(losses["side_supervision"], expected)
    torch.testing.assert_close(losses["loss"], losses["structure"] + 0.5 * expected)
    losses["loss"].backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in side)
    with pytest.raises(ValueError, match="side logits"):
        SegmentationCriterion(side_supervision_weight=0.5)(_output(), mask)
    assert "side_supervision" not in SegmentationCriterion()(output, mask)
