"""Every message the health report can print, each produced by the situation it describes (per-image
score histories), with its evidence in the text, and advice that names the flag of the current stage."""
import logging

import pytest

from engine.monitors.health_rules import EpochStats, ScheduleContext, analyse_history, schedule_context
from engine.monitors.paired_evidence import FalseAlarmBudget
from engine.monitors.post_epoch import _report
from tests.engine.monitors.score_histories import draw_history

MID_STAGE1 = ScheduleContext(stage=1, lr_flag="--lr", lr=5e-4, peak_lr=1e-3, min_lr=1e-5)
MID_STAGE2 = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=1.2e-4, peak_lr=2e-4, min_lr=1e-5)
TAIL = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=3e-5, peak_lr=2e-4, min_lr=1e-5)
AT_MIN = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=1e-5, peak_lr=2e-4, min_lr=1e-5)
CONSTANT = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=2e-4, peak_lr=2e-4, min_lr=1e-5, decaying=False)
BUDGET = FalseAlarmBudget(46)

FELL = draw_history([0.30, 0.50, 0.60, 0.66, 0.55, 0.54], [1.2, 1.0, 0.9, 0.85, 0.85, 0.85])
OVERFIT = draw_history([0.3, 0.5, 0.6, 0.62, 0.62, 0.62], [1.0, 0.8, 0.7, 0.68, 0.76, 0.80],
                       train_losses=[1.0, 0.8, 0.6, 0.5, 0.4, 0.3])
DIVERGING = draw_history([0.3, 0.5, 0.6, 0.62, 0.62, 0.62], [1.0, 0.8, 0.7, 0.68, 0.76, 0.80],
                         train_losses=[1.0, 0.8, 0.7, 0.7, 0.8, 0.9])
FLAT = draw_history([0.3, 0.5, 0.6, 0.6, 0.6, 0.6], [1.0, 0.8, 0.7, 0.7, 0.7, 0.7], images=400, image_noise=0.01)
NO_SIGNAL = draw_history([0.30, 0.27, 0.32], [1.0, 0.9, 0.8], image_blind_iou=0.31)

# (situation, (history, scores), context, where the text is, words it must hold)
CASES = [
    ("IoU fell", FELL, MID_STAGE1, "issues", "val IoU fell: the best of the last 2 epochs (epoch 5) is below epoch 4 by"),
    ("IoU fell evidence", FELL, MID_STAGE1, "issues", "(SE, 100 images), z = -"),
    ("IoU fell advice, stage 1", FELL, MID_STAGE1, "suggestions", "resume with --lr 0.00025"),
    ("IoU fell advice, stage 2", FELL, MID_STAGE2, "suggestions", "resume with --stage2-lr 6e-05"),
    ("overfitting", OVERFIT, MID_STAGE2, "issues", "overfitting: the lowest val loss of the last 2 epochs"),
    ("overfitting train loss", OVERFIT, MID_STAGE2, "issues", "while the training loss fell (0.5000 -> 0.3000)"),
    ("overfitting advice", OVERFIT, MID_STAGE2, "suggestions", "regularise"),
    ("val loss rising", DIVERGING, MID_STAGE2, "issues", "and the training loss did not fall (0.7000 -> 0.9000)"),
    ("val loss rising advice", DIVERGING, MID_STAGE2, "suggestions", "resume with --stage2-lr 6e-05"),
    ("plateau", FLAT, MID_STAGE1, "issues", "plateau: over the last 3 epochs val IoU changed"),
    ("plateau advice, stage 1", FLAT, MID_STAGE1, "suggestions", "resume with --lr 0.00025"),
    ("plateau advice, stage 2", FLAT, MID_STAGE2, "suggestions", "resume with --stage2-lr 6e-05"),
    ("plateau at a constant LR", FLAT, CONSTANT, "issues", "plateau"),
    ("cosine tail", FLAT, TAIL, "notes", "tail (3e-05, 15% of the stage's peak)"),
    ("at min LR", FLAT, AT_MIN, "notes", "at --min-lr (1e-05)"),
    ("no signal", NO_SIGNAL, MID_STAGE1, "issues", "no signal from the images: val IoU stayed below 0.3300 for 3 epochs"),
    ("no signal advice", NO_SIGNAL, MID_STAGE1, "suggestions", "check that each mask belongs to its image"),
]


@pytest.mark.parametrize("situation, drawn, context, where, words", CASES, ids=[case[0] for case in CASES])
def test_each_message_is_produced_and_printed(situation, drawn, context, where, words, caplog):
    history, scores = drawn
    health = analyse_history(history, scores, context, BUDGET)
    assert any(words in text for text in health[where]), (situation, health[where])
    with caplog.at_level(logging.INFO):
        _report(history[-1], health)
    assert words in caplog.text


@pytest.mark.parametrize("context", [TAIL, AT_MIN], ids=["tail", "min-lr"])
def test_the_schedule_tail_is_no_plateau_and_no_reason_to_lower_the_lr(context):
    history, scores = FLAT
    health = analyse_history(history, scores, context, BUDGET)
    assert not health["plateau"] and not health["issues"]
    assert not any("halve" in text for text in health["suggestions"])


def test_stage_two_advice_never_names_the_stage_one_flag():
    for history, scores in (FLAT, FELL, DIVERGING):
        advice = " ".join(analyse_history(history, scores, MID_STAGE2, BUDGET)["suggestions"])
        assert "--stage2-lr" in advice and "--lr " not in advice


def test_the_summary_line_shows_the_ema_beside_the_base_weights_and_says_when_nothing_is_wrong(caplog):
    last = EpochStats(4, 0.8, 0.7, val_iou=0.6123, val_iou_ema=0.6345)
    with caplog.at_level(logging.INFO):
        _report(last, {"improvement_rate": 2.0, "improvement": "acceptable", "issues": []})
    assert "val IoU 0.6123 (EMA 0.6345)" in caplog.text
    assert "no change beyond the validation noise" in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_context_from_a_real_plan_names_the_stage_and_sees_the_tail():
    from engine.config import build_config
    from engine.training.stages import PlanState, StagePlan
    from tests.conftest import TINY_SETTINGS

    config = build_config({}, dict(TINY_SETTINGS, epochs=10, stage1_epochs=4, warmup_epochs=1, min_lr=1e-5))
    plan = StagePlan(config, 12, PlanState.fresh(config))
    first, mid_stage2, last = (schedule_context(plan, index, config.warmup_epochs) for index in (0, 5, 9))
    assert (first.stage, first.lr_flag, first.epoch1_all_warmup) == (1, "--lr", True)
    assert (mid_stage2.stage, mid_stage2.lr_flag, mid_stage2.in_tail) == (2, "--stage2-lr", False)
    assert last.at_min_lr and last.in_tail


def test_learning_from_the_images_is_no_signal_issue():
    # one epoch above the bar (+0.02) among the last three; at the bar, within the noise, for too few
    # epochs to judge on means; or no bar at all
    for ious, bar in (([0.30, 0.29, 0.34], 0.31), ([0.30, 0.29], 0.31), ([0.2, 0.2, 0.2], None)):
        history, scores = draw_history(ious, [1.0] * len(ious), image_blind_iou=bar, image_noise=0.0)
        health = analyse_history(history, scores, MID_STAGE1, BUDGET)
        assert "no_signal" not in health["fired"], health
