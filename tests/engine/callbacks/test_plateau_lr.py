"""--auto-adjust-lr: the plateau LR callback halves the stage's LR on the health report's plateau
finding, through the plan, never below --min-lr, once per settle window; its state survives a resume."""
import io
import logging

import pytest
import torch

from engine.callbacks.plateau_lr import PlateauLRCallback
from engine.monitors.post_epoch import PostEpochEvaluator
from engine.training.stages import PlanState
from tests.engine.monitors.test_monitor_post_epoch import fake_trainer, flat_run, make_plan


def run_epochs(callback, trainer, val_losses, scores, report=None):
    """The health report, then the callback, on each epoch's record (the Trainer's order)."""
    report = report or PostEpochEvaluator()
    records = []
    for index, val in enumerate(val_losses):
        trainer.epoch, trainer.val_per_image = index, scores[index + 1]
        record = {"epoch": index + 1, "global_step": 10 * (index + 1), "val_loss": val, "val_iou": None,
                  "train_loss": val}
        report.on_epoch_end(trainer, record)
        callback.on_epoch_end(trainer, record)
        records.append(record)
    return records


def test_halves_the_lr_on_plateau_then_waits_and_never_goes_below_min_lr(caplog):
    callback = PlateauLRCallback(min_lr=1e-4, settle_epochs=3)
    trainer = fake_trainer(lr=1e-3, scheduler="constant")  # a constant LR: every flat stretch is a plateau
    flat, scores = flat_run()
    report = PostEpochEvaluator()
    with caplog.at_level(logging.INFO, logger="engine.callbacks.plateau_lr"):
        records = run_epochs(callback, trainer, flat, scores, report)
    plateaus = [r["epoch"] for r in records if r.get("health", {}).get("plateau")]
    halvings = [r["epoch"] for r in records if "halved" in r.get("health", {}).get("lr_adjustment", "")]
    assert plateaus == [6, 7, 8, 9, 10] and halvings == [6, 9]  # then a 3-epoch wait after each
    assert [record.getMessage() for record in caplog.records if record.name == "engine.callbacks.plateau_lr"] == [
        "  LR halved on plateau: 0.001 -> 0.0005 (stage 1 LR scale x0.5, kept in the plan)",
        "  LR halved on plateau: 0.001 -> 0.0005 (stage 1 LR scale x0.25, kept in the plan)"]
    plan = trainer.plan
    assert plan.lr_scale(1) == 0.25 and plan.lr_scale(2) == 1.0  # the scale belongs to the stage it was set in
    assert plan.lr_at(4, 1) == pytest.approx(2.5e-4) and plan.lr_at(12, 0) == pytest.approx(1e-3)
    cosine = make_plan()  # the floor: a scaled cosine never goes below --min-lr
    cosine.scale_lr(1, 0.25)
    for epoch, step in ((0, 0), (4, 1), (9, 2)):
        scheduled = make_plan().lr_at(epoch, step)
        assert cosine.lr_at(epoch, step) == pytest.approx(max(0.25 * scheduled, min(scheduled, 1e-4)))
    assert cosine.lr_at(9, 2) == pytest.approx(1e-4)  # the cosine tail, clamped at min LR
    trainer.current_lr = 1.5e-4  # halving would cross min LR: refused
    more, more_scores = flat_run(13)
    report.history, report.scores = [], {}
    last = run_epochs(callback, trainer, more, more_scores, report)[-1]
    assert "not halved" in last["health"]["lr_adjustment"] and trainer.plan.lr_scale(1) == 0.25


def test_no_plateau_finding_no_change():
    callback, trainer = PlateauLRCallback(), fake_trainer(scheduler="constant")
    record = {"epoch": 6, "health": {"plateau": False}}
    callback.on_epoch_end(trainer, record)
    callback.on_epoch_end(trainer, {"epoch": 7})  # an epoch the report did not judge
    assert trainer.plan.lr_scale(1) == 1.0 and "lr_adjustment" not in record["health"]


def test_state_and_the_plan_scale_round_trip_through_weights_only_load():
    callback, trainer = PlateauLRCallback(), fake_trainer(scheduler="constant")
    flat, scores = flat_run(6)
    run_epochs(callback, trainer, flat, scores)
    buffer = io.BytesIO()
    torch.save({"callback": callback.state_dict(), "plan": trainer.plan.state.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = PlateauLRCallback()
    restored.load_state_dict(saved["callback"])
    assert restored.adjusted_at_epoch == callback.adjusted_at_epoch == 6
    assert PlanState.from_state_dict(saved["plan"]).lr_scales == {1: 0.5}


@pytest.mark.parametrize("auto_adjust_lr", [True, False])
def test_a_run_with_auto_adjust_lr_gets_the_callback_right_after_the_report(tiny_config, auto_adjust_lr):
    from engine.build import build_callbacks
    from engine.callbacks.run_log import LoggingCallback
    from engine.training.callback import CallbackList

    callbacks = CallbackList(build_callbacks(tiny_config(auto_adjust_lr=auto_adjust_lr))).callbacks
    kinds = [type(callback) for callback in callbacks]
    if not auto_adjust_lr:
        assert PlateauLRCallback not in kinds
        return
    report, plateau = callbacks[kinds.index(PostEpochEvaluator)], callbacks[kinds.index(PlateauLRCallback)]
    assert kinds.index(PostEpochEvaluator) + 1 == kinds.index(PlateauLRCallback) < kinds.index(LoggingCallback)
    assert plateau.settle_epochs == report.plateau_epochs and plateau.min_lr == tiny_config().min_lr
