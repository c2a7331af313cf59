"""LR schedules against their closed-form formulas, and the two-stage plan."""
import math

import pytest

from engine.training.schedule import LRSchedule, steps_per_epoch
from engine.training.stages import PlanState, StagePlan


def cosine(base, floor, progress):
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_matches_closed_form(warmup):
    schedule = LRSchedule("cosine", base_lr=1e-3, min_lr=1e-5, total_steps=110, warmup_steps=warmup)
    if warmup:
        assert schedule.lr_at(0) == pytest.approx(1e-3 / warmup)  # warmup start
        assert schedule.lr_at(warmup - 1) == pytest.approx(1e-3)  # warmup end reaches the peak
    decay_steps = 110 - 1 - warmup
    assert schedule.lr_at(warmup) == pytest.approx(1e-3)
    middle = warmup + decay_steps // 2
    assert schedule.lr_at(middle) == pytest.approx(cosine(1e-3, 1e-5, (middle - warmup) / decay_steps))
    assert schedule.lr_at(109) == pytest.approx(1e-5)  # the last update lands on min_lr
    assert schedule.lr_at(500) == pytest.approx(1e-5)  # clamped past the end


def test_constant_and_warmup_constant_cosine():
    constant = LRSchedule("constant", 2e-4, 1e-5, 100, warmup_steps=5)
    assert constant.lr_at(2) == pytest.approx(2e-4 * 3 / 5)
    assert constant.lr_at(50) == constant.lr_at(99) == pytest.approx(2e-4)
    wcc = LRSchedule("warmup-constant-cosine", 2e-4, 1e-5, 100, warmup_steps=5)
    assert wcc.lr_at(79) == pytest.approx(2e-4)  # flat until the last 20 %
    assert wcc.lr_at(80) == pytest.approx(2e-4)  # decay starts at 80 ...
    assert wcc.lr_at(89) == pytest.approx(cosine(2e-4, 1e-5, 9 / 19))
    assert wcc.lr_at(99) == pytest.approx(1e-5)  # ... and ends on min_lr


def test_steps_per_epoch_counts_partial_windows():
    assert steps_per_epoch(3040, 8, 4) == math.ceil(math.ceil(3040 / 8) / 4) == 95
    assert steps_per_epoch(10, 4, 2) == 2  # 3 micro-batches -> windows of 2 and 1


def test_stage_plan_boundaries(tiny_config):
    config = tiny_config(epochs=10, stage1_epochs=3, lr=1e-3, stage2_lr=5e-4, backbone_lr_scale=0.1,
                         warmup_epochs=0, progressive_unfreeze=True, unfreeze_interval=2)
    plan = StagePlan(config, num_train_samples=12, state=PlanState.fresh(config))
    assert [plan.stage_of(e) for e in range(10)] == [1, 1, 1] + [2] * 7
    assert plan.lr_at(0, 0) == pytest.approx(1e-3)
    assert plan.lr_at(3, 0) == pytest.approx(5e-4)  # stage 2 has its own schedule from its own base LR
    assert plan.lr_at(9, plan.steps_per_epoch(2) - 1) == pytest.approx(config.min_lr)
    assert plan.encoder_lr_scale(1) == 0.0 and plan.encoder_lr_scale(2) == 0.1
    assert [plan.unfrozen_encoder_stages(e, 4) for e in range(10)] == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]


def test_skip_stage1_starts_in_stage2(tiny_config):
    config = tiny_config(epochs=5, stage1_epochs=2, skip_stage1=True)
    plan = StagePlan(config, 12, PlanState.fresh(config))
    assert plan.stage_of(0) == 2
    assert plan.unfrozen_encoder_stages(0, 4) == 4
