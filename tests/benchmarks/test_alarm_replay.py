"""The offline judge of benchmarks/monitor_alarms.py: replaying saved histories, and when a failure "shows"."""
import json
from pathlib import Path

import pytest

from benchmarks.alarm_replay import healthy_iou_at, judge, replay, visible_epoch

HISTORIES = Path(__file__).resolve().parents[2] / "benchmarks" / "histories" / "monitor_alarms"


def load(name):
    return json.loads((HISTORIES / f"{name}.json").read_text())


def history(ious, steps_per_epoch):
    return {"epochs": [{"epoch": index + 1, "global_step": (index + 1) * steps_per_epoch, "val_iou": iou}
                       for index, iou in enumerate(ious)]}


def test_the_healthy_curve_is_read_at_the_same_step():
    reference = [(50, 0.3), (100, 0.5)]
    assert healthy_iou_at(reference, 10) is None  # before the healthy runs' first validation: nothing to compare
    assert healthy_iou_at(reference, 75) == pytest.approx(0.4)
    assert healthy_iou_at(reference, 400) == pytest.approx(0.5)


def test_a_failure_shows_against_healthy_runs_after_as_many_steps():
    reference = [(50, 0.36), (100, 0.40), (150, 0.50)]
    slow = history([0.04, 0.10, 0.15, 0.16], steps_per_epoch=4)  # 4 steps an epoch: not comparable at epoch 1
    assert visible_epoch(slow, reference) is None
    stuck = history([0.02, 0.02], steps_per_epoch=50)
    assert visible_epoch(stuck, reference)["epoch"] == 1
    fell = history([0.36, 0.45, 0.38], steps_per_epoch=50)  # 0.05 below its own best
    assert visible_epoch(fell, reference)["epoch"] == 3
    broken = history([0.36, float("nan")], steps_per_epoch=50)
    assert visible_epoch(broken, reference)["epoch"] == 2


def test_in_time_means_no_later_than_one_epoch_after_the_failure_shows():
    reference = [(50, 0.36), (100, 0.40), (150, 0.50)]
    run = history([0.02, 0.02, 0.02], steps_per_epoch=50)
    assert judge(run, [{"rule": "no_signal", "step": 100}], reference)["caught_in_time"]
    assert not judge(run, [{"rule": "no_signal", "step": 150}], reference)["caught_in_time"]
    assert not judge(run, [], reference)["caught_in_time"]


def test_replaying_saved_runs_judges_them_as_the_rules_do_today():
    alarms, closest = replay(load("lr_x0.001"))
    assert min(alarms, key=lambda alarm: alarm["step"])["rule"] == "no_signal"
    assert min(alarm["epoch"] for alarm in alarms) == 2  # below the image-blind bar by the second epoch
    healthy = load("healthy-demo-6")
    alarms, closest = replay(healthy)
    assert alarms == [] and "closest" not in healthy  # quiet, and the saved history is left as it was
    assert set(closest) >= {"iou_fell", "val_loss_rose", "below_image_blind"}
