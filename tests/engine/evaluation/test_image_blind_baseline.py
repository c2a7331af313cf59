"""The image-blind bar: the best IoU of one fixed mask, checked against a brute-force search."""
import itertools

import pytest
import torch

from engine.evaluation.mask_prior import POOLED_SIZE, ImageBlindBaseline


def brute_force_best_fixed_mask_iou(masks: torch.Tensor) -> float:
    """Every one of the 2^P fixed masks of a tiny P-pixel set, each scored as ``per_image_scores`` does."""
    flat = masks.flatten(1).double()  # (N, P)
    pixels = flat.shape[1]
    candidates = torch.tensor(list(itertools.product([0.0, 1.0], repeat=pixels)), dtype=torch.float64)  # (2^P, P)
    intersection = flat @ candidates.T
    union = flat.sum(1, keepdim=True) + candidates.sum(1)[None, :] - intersection
    iou = torch.where(union == 0, torch.ones_like(union), intersection / union.clamp_min(1))
    return iou.mean(0).max().item()


def test_a_centred_object_set_is_matched_by_its_centre_and_identical_masks_score_one():
    masks = torch.zeros(4, 1, 64, 64)
    masks[:, :, 16:48, 16:48] = 1
    baseline = ImageBlindBaseline()
    baseline.update(masks[:2])
    baseline.update(masks[2:])
    assert baseline.compute() == pytest.approx(1.0)


def test_objects_all_over_the_image_leave_a_low_bar():
    masks = torch.zeros(16, 1, 64, 64)
    for index in range(16):  # 16 disjoint 16x16 tiles: no pixel is object in more than one image
        row, col = divmod(index, 4)
        masks[index, :, row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = 1
    baseline = ImageBlindBaseline()
    baseline.update(masks)
    assert baseline.compute() == pytest.approx(1 / 16, abs=1e-6)  # all foreground: 256 / 4096 each


@pytest.mark.parametrize("seed", range(5))
def test_no_fixed_mask_beats_the_bar_by_much(seed):
    """On random 4 x 4 sets (every fixed mask tried) the thresholded mean mask is within a few points
    of the true optimum and never above it."""
    generator = torch.Generator().manual_seed(seed)
    small = (torch.rand(12, 1, 4, 4, generator=generator) < torch.rand(1, 1, 4, 4, generator=generator)).float()
    scale = POOLED_SIZE // 4
    masks = small.repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # each tiny pixel a block
    baseline = ImageBlindBaseline()
    baseline.update(masks)
    bar, optimum = baseline.compute(), brute_force_best_fixed_mask_iou(small)
    assert optimum - 0.05 <= bar <= optimum + 1e-6
