"""Start-up facts: the loss-EMA and weight-EMA windows in this run's own epochs, and the warning
when the weight-EMA window is longer than the run."""
import pytest

from engine.config import build_config
from engine.monitors.averaging_windows import averaging_facts, remaining_updates
from engine.training.stages import PlanState, StagePlan
from tests.conftest import TINY_SETTINGS


def plan_for(**overrides):
    config = build_config({}, dict(TINY_SETTINGS, **overrides))
    return config, StagePlan(config, 40, PlanState.fresh(config))


def test_windows_are_stated_in_this_runs_epochs():
    config, plan = plan_for(epochs=30, stage1_epochs=10, batch_size=4, use_ema=True, ema_decay=0.99,
                            loss_ema_beta=0.9, stage2_batch_size=8)
    facts, warnings = averaging_facts(config, plan)
    loss_line, ema_line = facts
    # 40 images: 10 updates/epoch at batch 4 (stage 1), 5 at batch 8 (stage 2)
    assert "window about 10 optimizer steps = 1 epochs in stage 1 (10 updates/epoch), 2 epochs in stage 2" in loss_line
    assert "window and lag about 100 updates = 10 epochs in stage 1 (10 updates/epoch), 20 epochs in stage 2" in ema_line
    assert f"{10 * 10 + 20 * 5} updates left" in ema_line and not warnings


def test_a_window_longer_than_the_run_is_warned_with_a_decay_that_fits():
    config, plan = plan_for(epochs=3, stage1_epochs=1, batch_size=4, use_ema=True, ema_decay=0.999)
    assert remaining_updates(plan, 0) == 30
    _, warnings = averaging_facts(config, plan)
    assert len(warnings) == 1
    assert "longer than the 30 updates left" in warnings[0] and "--ema-warmup or --ema-decay 0.9" in warnings[0]
    _, resumed_late = averaging_facts(config, plan, start_epoch=2)
    assert "10 updates left" in resumed_late[0]


@pytest.mark.parametrize("overrides", [dict(use_ema=False), dict(use_ema=True, ema_warmup=True)])
def test_no_warning_without_ema_or_with_its_warmup(overrides):
    config, plan = plan_for(epochs=3, stage1_epochs=1, batch_size=4, ema_decay=0.999, **overrides)
    facts, warnings = averaging_facts(config, plan)
    assert not warnings and len(facts) == 1 + overrides["use_ema"]


def test_the_train_command_prints_the_facts_and_the_warning(tmp_path):
    from tests.cli.in_process import run_cli

    result = run_cli("train", "--dry-run", "--checkpoint-dir", tmp_path / "run", "--epochs", "3", "--stage1-epochs",
                     "1", "--synthetic-train-size", "40", "--batch-size", "4", "--use-ema")
    assert result.returncode == 0
    assert "loss EMA: beta 0.99, window about 100 optimizer steps" in result.stdout
    assert "warning: the weight-EMA window (about 1000 updates at --ema-decay 0.999)" in result.stdout
