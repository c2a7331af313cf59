"""The epoch-1 LR check: did the training loss fall, rise or stay put during the first epoch?

It compares the step losses of the epoch's first and last tenth (each step a fresh batch, so the
spread of the steps within a tenth measures the noise of its mean). Verdicts need evidence beyond
that noise at the run's critical ``z`` (``paired_evidence.FalseAlarmBudget``):

- ``too_high``: the last tenth's mean loss is significantly above the first tenth's, or not finite;
- ``too_low``: even the upper confidence bound of the fall is below ``BARELY_MOVED`` of the start;
- ``warmup``: the same, but the LR rose from almost 0 during most of the epoch (too early to judge);
- ``ok``: anything else, including a fall too noisy to grade.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch

BARELY_MOVED = 0.02  # a fall below 2 % of the starting loss over a whole epoch: "barely moved" (SPEC 8)
MIN_STEPS = 3  # per tenth: the spread of fewer steps is no estimate of the noise


def tenth_of(steps_in_epoch: int) -> int:
    """Steps per compared tenth (at least ``MIN_STEPS``); 0 when the epoch is too short to compare two."""
    tenth = max(MIN_STEPS, steps_in_epoch // 10)
    return tenth if steps_in_epoch >= 2 * tenth else 0


def first_epoch_lr_check(early: torch.Tensor, late: torch.Tensor, z: float, all_warmup: bool = False) -> Dict[str, Any]:
    """LR sanity from the step losses ``early`` (first tenth) and ``late`` (last tenth) of epoch 1.

    Returns:
        ``{"verdict": ..., "loss_change": percent fall or None, "message": str}``.
    """
    early, late = early.double().flatten(), late.double().flatten()
    start, end = float(early.mean()), float(late.mean())
    if not (math.isfinite(start) and math.isfinite(end)) or start <= 0:
        return {"verdict": "too_high", "loss_change": None,
                "message": "the loss was not finite in epoch 1: the LR is probably too high; halve --lr or "
                           "lengthen --warmup-epochs"}
    se = math.sqrt(float(early.var()) / early.numel() + float(late.var()) / late.numel())
    fall = start - end
    change = round(100.0 * fall / start, 4)
    evidence = f"{start:.4f} -> {end:.4f} ({-change:+.1f} %, SE {100.0 * se / start:.1f} %, " \
               f"{early.numel()} + {late.numel()} steps)"
    if -fall > z * se:
        return {"verdict": "too_high", "loss_change": change,
                "message": f"the loss rose during epoch 1 beyond its noise, mean of the first and last tenth "
                           f"{evidence}: the LR is probably too high; halve --lr or lengthen --warmup-epochs"}
    if fall + z * se < BARELY_MOVED * start:
        if all_warmup:
            return {"verdict": "warmup", "loss_change": change,
                    "message": f"the loss barely moved in epoch 1 ({evidence}), which was mostly LR warmup: too "
                               "early to judge the LR"}
        return {"verdict": "too_low", "loss_change": change,
                "message": f"the loss barely moved in epoch 1: {evidence}, a fall below {BARELY_MOVED:.0%} even "
                           "at its upper confidence bound: the LR may be too low; try 2-3x --lr"}
    return {"verdict": "ok", "loss_change": change, "message": f"the loss went {evidence} during epoch 1"}
