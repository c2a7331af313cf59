"""Post-epoch evaluator: the source notes' three scenarios, plateau, LR sanity, auto LR, record and state."""
import io
import json

import pytest
import torch

from engine.callbacks import StepOutput
from engine.monitors.post_epoch import (EpochStats, PostEpochEvaluator, analyse_history, first_epoch_lr_check,
                                        parse_epoch_selection)
from tests.engine.fakes import fake_trainer as trainer_services


def history(val, train=None, iou=None):
    train = train or [None] * len(val)
    iou = iou or [None] * len(val)
    return [EpochStats(epoch, v, t, i) for epoch, (v, t, i) in enumerate(zip(val, train, iou), start=1)]


def test_scenario_slow_improvement_at_the_last_epoch():
    epochs = history([3.5, 2.8, 2.7, 2.68])
    grades = [analyse_history(epochs[:n])["improvement"] for n in (2, 3, 4)]
    assert grades == ["good", "acceptable", "poor"]
    health = analyse_history(epochs)
    assert health["improvement_rate"] == pytest.approx(100 * 0.02 / 2.7, abs=1e-3)  # 0.74 %
    assert not health["issues"], "one slow epoch is validation noise, not yet an issue"
    assert not health["plateau"] and "train_val_gap" not in health
    again = analyse_history(history([3.5, 2.8, 2.7, 2.68, 2.67]))
    assert any(issue.startswith("slow improvement for 2 epochs") for issue in again["issues"])


def test_scenario_severe_overfitting_gap():
    health = analyse_history(history([3.6, 2.8, 2.6, 2.7], train=[3.5, 2.1, 1.2, 0.8]))
    assert health["train_val_gap"] == pytest.approx(237.5)
    assert health["gap"] == "severe"
    assert any("severe overfitting" in issue and "237.5 %" in issue for issue in health["issues"])
    assert any("weight decay" in suggestion for suggestion in health["suggestions"])


def test_scenario_small_gap_slow_steady_progress_suggests_capacity():
    health = analyse_history(history([4.6, 4.4, 4.2, 4.1], train=[4.5, 4.2, 4.0, 3.9]))
    assert health["gap"] == "healthy" and health["train_val_gap"] == pytest.approx(100 * 0.2 / 3.9, abs=1e-3)
    assert health["improvement"] == "acceptable"
    assert any(issue.startswith("underfitting") for issue in health["issues"])
    assert any("capacity" in suggestion for suggestion in health["suggestions"])
    assert json.loads(json.dumps(health)) == health  # goes into metrics.jsonl as is


@pytest.mark.parametrize("gap_train, grade", [(1.0, "healthy"), (0.85, "mild"), (0.7, "severe")])
def test_gap_grades(gap_train, grade):
    assert analyse_history(history([1.2, 1.0], train=[1.2, gap_train]))["gap"] == grade


def test_plateau_needs_loss_and_iou_to_stall():
    val = [1.0, 0.8, 0.7, 0.699, 0.698, 0.6975]
    assert analyse_history(history(val))["plateau"]
    assert analyse_history(history(val, iou=[0.5, 0.6, 0.7, 0.7, 0.7, 0.7]))["plateau"]
    assert not analyse_history(history(val, iou=[0.5, 0.6, 0.7, 0.72, 0.74, 0.76]))["plateau"]
    assert not analyse_history(history(val[:3]))["plateau"]  # too short to judge


@pytest.mark.parametrize("start, end, peak, verdict", [
    (1.0, 0.995, 1.0, "too_low"), (1.0, 1.2, 1.3, "too_high"), (1.0, 0.9, 2.0, "too_high"),
    (1.0, 0.8, 1.05, "ok"), (1.0, float("nan"), 1.0, "too_high"),
])
def test_first_epoch_lr_sanity(start, end, peak, verdict):
    assert first_epoch_lr_check(start, end, peak)["verdict"] == verdict


def test_epoch_selection():
    default = parse_epoch_selection("2+")
    assert [default(e) for e in (1, 2, 9)] == [False, True, True]
    listed = parse_epoch_selection("1,5,8-9")
    assert [e for e in range(1, 11) if listed(e)] == [1, 5, 8, 9]
    assert not parse_epoch_selection("none")(3)
    with pytest.raises(ValueError, match="--eval-epochs"):
        parse_epoch_selection("every other")


class RecordingWriter:
    def __init__(self):
        self.tags = []

    def add_scalar(self, tag, value, step):
        self.tags.append(tag)


def make_plan(min_lr=1e-4, scheduler="cosine"):
    from engine.config import build_config
    from engine.training.stages import PlanState, StagePlan
    from tests.conftest import TINY_SETTINGS

    config = build_config({}, dict(TINY_SETTINGS, epochs=20, stage1_epochs=10, min_lr=min_lr, warmup_epochs=0,
                                   scheduler=scheduler))
    return StagePlan(config, 12, PlanState.fresh(config))


def fake_trainer(writer=None, lr=1e-3, scheduler="cosine"):
    return trainer_services(writer, epoch=0, stage=1, current_lr=lr, plan=make_plan(scheduler=scheduler))


def run_epochs(evaluator, trainer, val_losses, train_losses=None):
    records = []
    for index, val in enumerate(val_losses):
        trainer.epoch = index
        evaluator.on_epoch_start(trainer)
        record = {"epoch": index + 1, "global_step": 10 * (index + 1), "val_loss": val, "val_iou": None,
                  "train_loss": (train_losses or val_losses)[index]}
        evaluator.on_epoch_end(trainer, record)
        records.append(record)
    return records


def test_first_epoch_lr_check_from_the_steps():
    evaluator, trainer = PostEpochEvaluator(), fake_trainer()
    for step in range(1, 21):
        loss = torch.tensor(2.0 - 0.0005 * step)  # barely moves
        evaluator.on_optimizer_step(trainer, StepOutput(loss, 1e-3, None, step, step, 20))
    record = run_epochs(evaluator, trainer, [1.99])[0]
    assert record["health"]["lr_sanity"]["verdict"] == "too_low"
    assert "too low" in record["health"]["issues"][0]


def test_records_health_and_writes_tensorboard_from_epoch_two():
    writer = RecordingWriter()
    records = run_epochs(PostEpochEvaluator("2+"), fake_trainer(writer), [3.6, 2.8, 2.6, 2.7], [3.5, 2.1, 1.2, 0.8])
    assert "health" not in records[0]
    assert records[3]["health"]["gap"] == "severe"
    assert {"evaluation/improvement_rate", "evaluation/train_val_gap", "evaluation/plateau_detected"} <= set(
        writer.tags)
    assert writer.tags.count("evaluation/plateau_detected") == 3


def test_auto_adjust_halves_lr_on_plateau_never_below_min_lr():
    evaluator = PostEpochEvaluator("2+", auto_adjust_lr=True, min_lr=1e-4, plateau_epochs=3)
    trainer = fake_trainer(lr=1e-3, scheduler="constant")  # a constant LR: every flat stretch is a plateau
    flat = [1.0, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    records = run_epochs(evaluator, trainer, flat)
    halvings = [r["epoch"] for r in records if "halved" in r.get("health", {}).get("lr_adjustment", "")]
    assert halvings == [6, 9]  # plateau first seen at epoch 6, then a 3-epoch cooldown
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
    assert "not halved" in run_epochs(evaluator, trainer, flat + [0.7, 0.7, 0.7])[-1]["health"]["lr_adjustment"]
    untouched = fake_trainer(scheduler="constant")
    run_epochs(PostEpochEvaluator(), untouched, flat)  # off by default
    assert untouched.plan.lr_scale(1) == 1.0


def test_state_and_the_plan_scale_round_trip_through_weights_only_load():
    from engine.training.stages import PlanState

    evaluator = PostEpochEvaluator(auto_adjust_lr=True)
    trainer = fake_trainer()
    run_epochs(evaluator, trainer, [1.0, 0.8, 0.7, 0.7, 0.7, 0.7])
    buffer = io.BytesIO()
    torch.save({"evaluator": evaluator.state_dict(), "plan": trainer.plan.state.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = PostEpochEvaluator(auto_adjust_lr=True)
    restored.load_state_dict(saved["evaluator"])
    assert restored.history == evaluator.history and restored.adjusted_at_epoch == evaluator.adjusted_at_epoch == 6
    assert PlanState.from_state_dict(saved["plan"]).lr_scales == {1: 0.5}


def test_the_gap_compares_the_structure_term_with_the_val_loss_not_the_total():
    """Side supervision adds 0.5 x the side losses to the training total only: a total of 1.5 with a
    structure term of 0.8 against a val loss of 1.0 is 25 % overfitting, not -33 %."""
    evaluator, trainer = PostEpochEvaluator("2+"), fake_trainer()
    names = ("structure_raw", "balance_raw", "side_supervision_raw")
    records = []
    for epoch, structure in enumerate((0.9, 0.8)):
        trainer.epoch = epoch
        for step in range(1, 11):
            terms = torch.tensor([structure, 1.0, 1.2])
            evaluator.on_optimizer_step(trainer, StepOutput(torch.tensor(1.5), 1e-3, None, 10 * epoch + step, step, 10,
                                                            loss_terms=terms, loss_term_names=names))
        record = {"epoch": epoch + 1, "global_step": 10 * (epoch + 1), "val_loss": 1.0, "val_iou": None,
                  "train_loss": 1.5}
        evaluator.on_epoch_end(trainer, record)
        records.append(record)
    assert [round(r["train_structure_loss"], 6) for r in records] == [0.9, 0.8]
    assert records[1]["health"]["train_val_gap"] == pytest.approx(25.0)
    assert any("mild overfitting" in issue for issue in records[1]["health"]["issues"])


def test_without_loss_terms_the_gap_falls_back_to_the_total():
    records = run_epochs(PostEpochEvaluator("2+"), fake_trainer(), [1.0, 1.0], [0.5, 0.5])
    assert "train_structure_loss" not in records[1]
    assert records[1]["health"]["train_val_gap"] == pytest.approx(100.0)
