"""Each health rule fires on a known-bad history of per-image scores and stays quiet on noisy
healthy ones; histories are drawn image by image (score_histories.py), never as hand-picked means."""
import dataclasses

import pytest

from engine.monitors.health_rules import ScheduleContext, analyse_history
from engine.monitors.paired_evidence import FalseAlarmBudget
from tests.engine.monitors.score_histories import draw_history

MID = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=1e-3, peak_lr=2e-3, min_lr=1e-4)
TAIL = ScheduleContext(stage=2, lr_flag="--stage2-lr", lr=2e-4, peak_lr=2e-3, min_lr=1e-4)
DEMO_BUDGET = FalseAlarmBudget(46)  # configs/demo.yaml: 11 judged epochs x 4 rules + the epoch-1 check
RISING_IOU = [0.25, 0.40, 0.50, 0.58, 0.64, 0.68, 0.71, 0.73]
IMAGE_BLIND = 0.27  # the demo's fixed-mask bar (0.25-0.28 measured)
FALLING_LOSS = [1.30, 1.10, 0.95, 0.85, 0.78, 0.73, 0.70, 0.68]


def fired_at_each_epoch(history, scores, context=MID, budget=DEMO_BUDGET):
    """The rules that fired, epoch by epoch, as the callback would judge the run."""
    return {h.epoch: analyse_history(history[:index + 1], scores, context, budget)["fired"]
            for index, h in enumerate(history) if index}


def fired_anywhere(*args, **kwargs):
    return {rule for rules in fired_at_each_epoch(*args, **kwargs).values() for rule in rules}


@pytest.mark.parametrize("seed", range(40))
def test_noisy_healthy_runs_raise_nothing(seed):
    """Healthy demo-like runs: rising IoU with a one-epoch dip somewhere, each image noisy."""
    dip = 2 + seed % 5
    ious = [iou - (0.06 if index == dip else 0.0) for index, iou in enumerate(RISING_IOU)]
    losses = [loss + (0.06 if index == dip else 0.0) for index, loss in enumerate(FALLING_LOSS)]
    history, scores = draw_history(ious, losses, seed=seed, image_noise=0.06, image_blind_iou=IMAGE_BLIND)
    assert fired_anywhere(history, scores) == set()


@pytest.mark.parametrize("seed", range(20))
def test_a_slow_start_near_the_image_blind_bar_is_no_signal_issue(seed):
    """Healthy runs that spend two epochs at the bar (demo seeds 4 and 6 did: 0.30, 0.26 against 0.25-0.26)."""
    ious = [0.28, 0.25, 0.34, 0.42, 0.50, 0.55]
    history, scores = draw_history(ious, FALLING_LOSS[:6], seed=seed, image_noise=0.06, image_blind_iou=IMAGE_BLIND)
    assert "no_signal" not in fired_anywhere(history, scores)


@pytest.mark.parametrize("ious", [[0.02, 0.02, 0.03, 0.03], [0.17, 0.21, 0.24, 0.22]],
                         ids=["lr-far-too-low", "shuffled-masks"])
def test_below_the_image_blind_bar_is_no_signal_from_the_second_epoch(ious):
    """Even the best epoch so far significantly below one fixed mask: the second epoch says so, not the third."""
    history, scores = draw_history(ious, [1.3] * len(ious), image_noise=0.06, image_blind_iou=0.28)
    fired = fired_at_each_epoch(history, scores)
    assert "no_signal" in fired[2]
    health = analyse_history(history[:2], scores, MID, DEMO_BUDGET)
    evidence = next(e for e in health["evidence"] if e["rule"] == "below_image_blind")
    assert evidence["after_epoch"] == 2 and evidence["z"] <= -DEMO_BUDGET.early_z and evidence["images"] == 100
    assert any("below what one fixed mask for every image" in issue for issue in health["issues"])
    assert len([issue for issue in health["issues"] if "no signal" in issue]) == 1  # not twice with the means rule


def test_the_second_epochs_no_signal_test_spends_the_early_share_and_later_ones_do_not():
    """A demo run at 0.01x the LR (val IoU 0.171, 0.192 against the bar 0.247; its epoch-2 z was -2.76):
    beyond the early critical z but not the others', so it fires at epoch 2 and, judged at any
    later epoch, the same evidence would not."""
    history, scores = draw_history([0.171, 0.192], [1.3, 1.3], seed=0, image_noise=0.06, image_blind_iou=0.247)
    health = analyse_history(history, scores, MID, DEMO_BUDGET)
    evidence = next(e for e in health["evidence"] if e["rule"] == "below_image_blind")
    assert -DEMO_BUDGET.z < evidence["z"] <= -DEMO_BUDGET.early_z  # the case the early share is for
    assert "no_signal" in health["fired"] and f"z <= -{DEMO_BUDGET.early_z:.2f}" in health["issues"][0]
    later = [dataclasses.replace(h, epoch=h.epoch + 1) for h in history]
    shifted = {h.epoch + 1: scores[h.epoch] for h in history}
    assert "no_signal" not in analyse_history(later, shifted, MID, DEMO_BUDGET)["fired"]


def test_iou_fall_fires_when_it_lasts_two_epochs():
    ious = [0.30, 0.50, 0.60, 0.66, 0.55, 0.54]
    history, scores = draw_history(ious, [1.2, 1.0, 0.9, 0.85, 0.85, 0.85])
    fired = fired_at_each_epoch(history, scores)
    assert "iou_fell" in fired[6] and "iou_fell" not in fired[5]  # one epoch down is still a dip
    health = analyse_history(history, scores, MID, DEMO_BUDGET)
    evidence = next(e for e in health["evidence"] if e["rule"] == "iou_fell")
    assert evidence["before_epoch"] == 4 and evidence["z"] <= -DEMO_BUDGET.z and evidence["images"] == 100


def test_a_one_epoch_dip_is_no_fall():
    history, scores = draw_history([0.30, 0.50, 0.60, 0.66, 0.50, 0.67], [1.2, 1.0, 0.9, 0.85, 0.95, 0.84])
    assert fired_anywhere(history, scores) == set()


def test_overfitting_is_val_loss_rising_beyond_noise_while_train_loss_falls():
    val = [1.0, 0.8, 0.7, 0.68, 0.76, 0.80]
    history, scores = draw_history([0.3, 0.5, 0.6, 0.62, 0.62, 0.62], val, train_losses=[1.0, 0.8, 0.6, 0.5, 0.4, 0.3])
    fired = fired_at_each_epoch(history, scores)
    assert fired[6] == ["overfitting"] and "overfitting" not in fired[5]


def test_val_and_train_loss_rising_together_is_no_overfitting():
    val = [1.0, 0.8, 0.7, 0.68, 0.76, 0.80]
    history, scores = draw_history([0.3, 0.5, 0.6, 0.62, 0.62, 0.62], val, train_losses=[1.0, 0.8, 0.7, 0.7, 0.8, 0.9])
    assert fired_at_each_epoch(history, scores)[6] == ["val_loss_rising"]


def test_a_val_loss_wobble_with_train_loss_falling_is_quiet():
    """The gap between train and val loss grows (different modes, augmentation), val loss moves +-1 %."""
    history, scores = draw_history([0.3, 0.5, 0.6, 0.62, 0.63, 0.64], [1.0, 0.8, 0.70, 0.69, 0.70, 0.695],
                                   train_losses=[1.0, 0.7, 0.5, 0.4, 0.3, 0.2])
    assert fired_anywhere(history, scores) == set()


def test_a_plateau_needs_confidence_that_the_change_is_below_the_tolerance():
    flat_iou, flat_loss = [0.3, 0.5, 0.6, 0.6, 0.6, 0.6], [1.0, 0.8, 0.7, 0.7, 0.7, 0.7]
    history, scores = draw_history(flat_iou, flat_loss, images=400, image_noise=0.01)
    health = analyse_history(history, scores, MID, DEMO_BUDGET)
    assert health["plateau"] and health["fired"] == ["plateau"]
    assert not analyse_history(history, scores, TAIL, DEMO_BUDGET)["plateau"]  # slow by design there
    noisy, noisy_scores = draw_history(flat_iou, flat_loss, images=100, image_noise=0.06)
    assert not analyse_history(noisy, noisy_scores, MID, DEMO_BUDGET)["plateau"]  # too noisy to tell
    rising, rising_scores = draw_history([0.3, 0.5, 0.6, 0.62, 0.64, 0.66], [1.0, 0.8, 0.7, 0.68, 0.66, 0.64],
                                         images=400, image_noise=0.01)
    assert not analyse_history(rising, rising_scores, MID, DEMO_BUDGET)["plateau"]


def test_too_few_images_judge_nothing():
    history, scores = draw_history([0.3, 0.6, 0.7, 0.72, 0.3, 0.3], [1.0, 0.8, 0.7, 0.7, 1.5, 1.6], images=10)
    health = analyse_history(history, scores, MID, DEMO_BUDGET)
    assert health["fired"] == [] and any("too few" in note for note in health["notes"])


def test_epochs_before_a_resume_from_an_older_checkpoint_take_no_part():
    """An older checkpoint kept epoch means only: the paired rules start with the epochs after it."""
    history, scores = draw_history([0.3, 0.5, 0.7, 0.50, 0.50, 0.52], [1.2, 1.0, 0.8, 1.0, 1.0, 0.98])
    resumed = {epoch: value for epoch, value in scores.items() if epoch >= 4}  # resumed after epoch 3
    assert "iou_fell" in analyse_history(history, scores, MID, DEMO_BUDGET)["fired"]
    assert analyse_history(history, resumed, MID, DEMO_BUDGET)["fired"] == []
    assert analyse_history(history[:4], {4: scores[4]}, MID, DEMO_BUDGET)["evidence"] == []


def test_a_changed_validation_set_is_not_paired_with_the_old_one():
    history, scores = draw_history([0.3, 0.5, 0.7, 0.40, 0.40], [1.2, 1.0, 0.8, 1.0, 1.0])
    scores[4], scores[5] = scores[4][:80], scores[5][:80]
    assert analyse_history(history, scores, MID, DEMO_BUDGET)["evidence"] == []


def test_without_per_image_scores_only_the_descriptions_and_no_signal_remain():
    history, _ = draw_history([0.3, 0.5, 0.7, 0.40, 0.40], [1.2, 1.0, 0.8, 1.0, 1.0])
    health = analyse_history(history)
    assert health["fired"] == [] and {"improvement", "iou_improvement", "gap"} <= health.keys()
