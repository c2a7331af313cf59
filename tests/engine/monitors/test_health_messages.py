"""Every message the health report can print, each produced by the situation it describes, and
advice that names the flag acting in the current stage."""
import logging

import pytest

from engine.monitors.post_epoch import (EpochStats, ScheduleContext, _report, analyse_history, first_epoch_lr_check,
                                        schedule_context)

MID_STAGE1 = ScheduleContext(stage=1, lr_flag="--lr", lr=5e-4, peak_lr=1e-3, min_lr=1e-5)
MID_STAGE2 = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=1.2e-4, peak_lr=2e-4, min_lr=1e-5)
TAIL = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=3e-5, peak_lr=2e-4, min_lr=1e-5)
AT_MIN = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=1e-5, peak_lr=2e-4, min_lr=1e-5)
CONSTANT = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=2e-4, peak_lr=2e-4, min_lr=1e-5, decaying=False)


def history(val_losses, train_losses=None, ious=None, image_blind_iou=None):
    return [EpochStats(index + 1, val, (train_losses or val_losses)[index], (ious or [None] * len(val_losses))[index],
                       image_blind_iou) for index, val in enumerate(val_losses)]


FLAT = [1.0, 0.8, 0.7, 0.7, 0.7, 0.7]
STEADY_SLOW = [1.0, 0.995, 0.99, 0.985, 0.98]

# (situation, history, context, where the text is, words it must hold)
CASES = [
    ("slow improvement", history(FLAT), MID_STAGE1, "issues",
     "slow improvement for 2 epochs: val loss 0.7000 -> 0.7000 -> 0.7000"),
    ("slow IoU", history([1.0, 0.9, 0.8], ious=[0.500, 0.501, 0.502]), MID_STAGE1, "issues",
     "slow IoU progress for 2 epochs"),
    ("severe overfitting", history([1.0, 0.9], [0.9, 0.5]), MID_STAGE1, "issues", "severe overfitting"),
    ("severe overfitting advice", history([1.0, 0.9], [0.9, 0.5]), MID_STAGE1, "suggestions", "regularise"),
    ("mild overfitting", history([1.0, 0.9], [0.9, 0.8]), MID_STAGE1, "issues", "mild overfitting"),
    ("mild overfitting advice", history([1.0, 0.9], [0.9, 0.8]), MID_STAGE1, "suggestions", "watch the gap"),
    ("plateau", history(FLAT), MID_STAGE1, "issues", "plateau: val loss improved < 1%"),
    ("plateau advice, stage 1", history(FLAT), MID_STAGE1, "suggestions", "resume with --lr 0.00025"),
    ("plateau advice, stage 2", history(FLAT), MID_STAGE2, "suggestions", "resume with --stage2-lr 6e-05"),
    ("plateau at a constant LR", history(FLAT), CONSTANT, "issues", "plateau"),
    ("underfitting", history(STEADY_SLOW), MID_STAGE1, "issues", "underfitting"),
    ("underfitting advice", history(STEADY_SLOW), MID_STAGE1, "suggestions", "add capacity"),
    ("poor improvement advice", history([1.0, 0.7, 0.72, 0.719]), MID_STAGE2, "suggestions",
     "lower the LR: resume with --stage2-lr 6e-05 (half of the current 0.00012)"),
    ("cosine tail", history(FLAT), TAIL, "notes", "tail (3e-05, 15% of the stage's peak)"),
    ("at min LR", history(FLAT), AT_MIN, "notes", "at --min-lr (1e-05)"),
    ("converged at min LR", history(FLAT), AT_MIN, "suggestions", "converged at this LR"),
    ("no signal", history([1.0, 0.9, 0.8], ious=[0.30, 0.27, 0.32], image_blind_iou=0.31), MID_STAGE1, "issues",
     "no signal from the images: val IoU stayed below 0.3300 for 3 epochs (0.3000, 0.2700, 0.3200), while one fixed "
     "mask for every image (the validation set's mean mask) scores 0.3100"),
    ("no signal advice", history([1.0, 0.9, 0.8], ious=[0.30, 0.27, 0.32], image_blind_iou=0.31), MID_STAGE1,
     "suggestions", "check that each mask belongs to its image"),
]


@pytest.mark.parametrize("situation, epochs, context, where, words", CASES, ids=[case[0] for case in CASES])
def test_each_message_is_produced_and_printed(situation, epochs, context, where, words, caplog):
    health = analyse_history(epochs, context=context)
    assert any(words in text for text in health[where]), (situation, health)
    with caplog.at_level(logging.INFO):
        _report(epochs[-1].epoch, health)
    assert words in caplog.text


@pytest.mark.parametrize("context", [TAIL, AT_MIN], ids=["tail", "min-lr"])
def test_the_schedule_tail_is_no_plateau_and_no_reason_to_lower_the_lr(context):
    for epochs in (history(FLAT), history(STEADY_SLOW)):
        health = analyse_history(epochs, context=context)
        assert not health["plateau"] and not health["issues"]
        assert not any("lower the LR" in text or "halve" in text or "capacity" in text for text in health["suggestions"])


def test_stage_two_advice_never_names_the_stage_one_flag():
    for epochs in (history(FLAT), history([1.0, 0.7, 0.72, 0.719])):
        advice = " ".join(analyse_history(epochs, context=MID_STAGE2)["suggestions"])
        assert "--stage2-lr" in advice and "--lr " not in advice


@pytest.mark.parametrize("start, end, peak, all_warmup, verdict, words", [
    (1.0, 0.995, 1.0, False, "too_low", "the LR may be too low; try 2-3x --lr"),
    (1.0, 0.995, 1.0, True, "warmup", "mostly LR warmup: too early to judge"),
    (1.0, 1.2, 1.3, True, "too_high", "probably too high"),  # a spike counts even in warmup
    (1.0, 0.8, 1.05, False, "ok", "the loss fell 20.0 % during epoch 1"),
])
def test_first_epoch_lr_messages(start, end, peak, all_warmup, verdict, words, caplog):
    check = first_epoch_lr_check(start, end, peak, all_warmup)
    assert check["verdict"] == verdict and words in check["message"]
    health = {"lr_sanity": check, "issues": [check["message"]] if verdict in ("too_low", "too_high") else []}
    with caplog.at_level(logging.INFO):
        _report(1, health)
    assert words in caplog.text


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


def test_one_noisy_epoch_is_not_an_issue():
    noisy = history([1.0, 0.8, 0.7, 0.74], ious=[0.30, 0.35, 0.40, 0.28])  # a dip, measured on healthy runs
    assert not analyse_history(noisy, context=MID_STAGE1)["issues"]


def test_learning_from_the_images_is_no_signal_issue():
    # one epoch above the bar (+0.02) among the last three, too few epochs to judge, or no bar at all
    for ious, bar in (([0.30, 0.29, 0.34], 0.31), ([0.25, 0.24], 0.31), ([0.2, 0.2, 0.2], None)):
        epochs = history([1.0] * len(ious), ious=ious, image_blind_iou=bar)
        health = analyse_history(epochs, context=MID_STAGE1)
        assert not any("no signal" in issue for issue in health["issues"]), health


def test_a_slow_val_loss_is_no_issue_while_val_iou_rises():
    """Measured on a healthy synthetic seed: val loss +9 % for one epoch, then +0.7 %, val IoU 0.25 -> 0.45."""
    epochs = history([1.2994, 1.4220, 1.4117], ious=[0.451, 0.252, 0.452])
    assert not any("slow improvement" in issue for issue in analyse_history(epochs, context=MID_STAGE2)["issues"])
    flat_iou = history([1.2994, 1.4220, 1.4117], ious=[0.451, 0.452, 0.453])
    assert any("slow improvement" in issue for issue in analyse_history(flat_iou, context=MID_STAGE2)["issues"])


def test_no_underfitting_while_val_iou_climbs_fast():
    """Measured on a synthetic run: val loss -0.3 % a epoch while val IoU rose 0.48 -> 0.62."""
    epochs = history(STEADY_SLOW, ious=[0.40, 0.44, 0.48, 0.55, 0.62])
    assert not any("underfitting" in issue for issue in analyse_history(epochs, context=MID_STAGE1)["issues"])
