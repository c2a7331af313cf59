"""Post-epoch evaluator: descriptions, records, TensorBoard tags, the plateau finding, state and resume."""
import io
import json
from types import SimpleNamespace

import pytest
import torch

from engine.callbacks import StepOutput
from engine.config import parse_epoch_selection
from engine.monitors.health_rules import EpochStats, analyse_history
from engine.monitors.post_epoch import PostEpochEvaluator
from tests.engine.fakes import fake_trainer as trainer_services


def history(val, train=None, iou=None):
    train = train or [None] * len(val)
    iou = iou or [None] * len(val)
    return [EpochStats(epoch, v, t, i) for epoch, (v, t, i) in enumerate(zip(val, train, iou), start=1)]


def test_the_grades_describe_each_epoch_and_raise_nothing_by_themselves():
    """SPEC section 8's grades stay in the record and TensorBoard; a 237 % gap or a 0.7 % step alone
    is no issue (training and validation losses are measured in different modes)."""
    epochs = history([3.5, 2.8, 2.7, 2.68])
    assert [analyse_history(epochs[:n])["improvement"] for n in (2, 3, 4)] == ["good", "acceptable", "poor"]
    assert analyse_history(epochs)["improvement_rate"] == pytest.approx(100 * 0.02 / 2.7, abs=1e-3)
    health = analyse_history(history([3.6, 2.8, 2.6, 2.7], train=[3.5, 2.1, 1.2, 0.8]))
    assert health["train_val_gap"] == pytest.approx(237.5) and health["gap"] == "severe"
    assert health["issues"] == [] and health["fired"] == []
    assert json.loads(json.dumps(health)) == health  # goes into metrics.jsonl as is


@pytest.mark.parametrize("gap_train, grade", [(1.0, "healthy"), (0.85, "mild"), (0.7, "severe")])
def test_gap_grades(gap_train, grade):
    assert analyse_history(history([1.2, 1.0], train=[1.2, gap_train]))["gap"] == grade


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


def run_epochs(evaluator, trainer, val_losses, train_losses=None, scores=None):
    """Feed epoch records (and, with ``scores``, each epoch's per-image scores) to the evaluator."""
    records = []
    for index, val in enumerate(val_losses):
        trainer.epoch = index
        trainer.val_per_image = scores[index + 1] if scores else None
        evaluator.on_epoch_start(trainer)
        record = {"epoch": index + 1, "global_step": 10 * (index + 1), "val_loss": val, "val_iou": None,
                  "train_loss": (train_losses or val_losses)[index]}
        evaluator.on_epoch_end(trainer, record)
        records.append(record)
    return records


def test_records_health_and_writes_tensorboard_from_epoch_two():
    writer = RecordingWriter()
    records = run_epochs(PostEpochEvaluator("2+"), fake_trainer(writer), [3.6, 2.8, 2.6, 2.7], [3.5, 2.1, 1.2, 0.8])
    assert "health" not in records[0]
    assert records[3]["health"]["gap"] == "severe"
    assert {"evaluation/improvement_rate", "evaluation/train_val_gap", "evaluation/plateau_detected"} <= set(
        writer.tags)
    assert writer.tags.count("evaluation/plateau_detected") == 3


def flat_run(epochs=10):
    """A run that stops improving after epoch 3: 400 images, each barely moving (a clear plateau)."""
    from tests.engine.monitors.score_histories import draw_history

    ious = [0.3, 0.5, 0.6] + [0.6] * (epochs - 3)
    losses = [1.0, 0.8, 0.7] + [0.7] * (epochs - 3)
    stats, scores = draw_history(ious, losses, images=400, image_noise=0.01)
    return [h.val_loss for h in stats], scores


def test_the_report_finds_the_plateau_and_leaves_the_lr_alone():
    """The report only observes: a plateau is a finding; halving the LR is engine/callbacks/plateau_lr.py's."""
    trainer = fake_trainer(scheduler="constant")
    flat, scores = flat_run()
    records = run_epochs(PostEpochEvaluator(), trainer, flat, scores=scores)
    assert [r["epoch"] for r in records if r.get("health", {}).get("plateau")] == [6, 7, 8, 9, 10]
    assert trainer.plan.lr_scale(1) == 1.0 and not any("lr_adjustment" in r.get("health", {}) for r in records)


def test_state_round_trips_through_weights_only_load():
    evaluator = PostEpochEvaluator()
    flat, scores = flat_run(6)
    run_epochs(evaluator, fake_trainer(scheduler="constant"), flat, scores=scores)
    buffer = io.BytesIO()
    torch.save(evaluator.state_dict(), buffer)
    buffer.seek(0)
    restored = PostEpochEvaluator()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.history == evaluator.history
    assert restored.scores.keys() == scores.keys()
    assert all(torch.equal(restored.scores[epoch], scores[epoch]) for epoch in scores)


def test_an_older_checkpoint_without_per_image_scores_resumes_with_means_only():
    evaluator = PostEpochEvaluator()
    evaluator.load_state_dict({"history": [{"epoch": 1, "val_loss": 1.0, "train_loss": 1.1, "val_iou": 0.3,
                                            "image_blind_iou": 0.2}], "adjusted_at_epoch": 0})
    assert evaluator.scores == {} and evaluator.history[0].val_iou_ema is None
    flat, scores = flat_run(4)
    trainer = fake_trainer()
    trainer.epoch, trainer.val_per_image = 1, scores[2]
    record = {"epoch": 2, "global_step": 20, "val_loss": flat[1], "val_iou": 0.5, "train_loss": 0.9}
    evaluator.on_epoch_end(trainer, record)
    assert record["health"]["evidence"] == [] and "improvement" in record["health"]  # nothing to pair yet
    assert list(evaluator.scores) == [2]


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
    assert records[1]["health"]["gap"] == "mild" and records[1]["health"]["issues"] == []


def test_without_loss_terms_the_gap_falls_back_to_the_total():
    records = run_epochs(PostEpochEvaluator("2+"), fake_trainer(), [1.0, 1.0], [0.5, 0.5])
    assert "train_structure_loss" not in records[1]
    assert records[1]["health"]["train_val_gap"] == pytest.approx(100.0)


def test_a_validation_set_of_another_size_starts_the_paired_history_afresh():
    """A resume on other data roots validates other images: the old tables are dropped, and saving works."""
    evaluator, trainer = PostEpochEvaluator(), fake_trainer()
    flat, scores = flat_run(4)
    run_epochs(evaluator, trainer, flat[:2], scores={1: scores[1], 2: scores[2]})
    trainer.epoch, trainer.val_per_image = 2, scores[3][:50]
    evaluator.on_epoch_end(trainer, {"epoch": 3, "global_step": 30, "val_loss": 0.7, "val_iou": 0.6, "train_loss": 0.7})
    assert list(evaluator.scores) == [3] and evaluator.state_dict()["scores"].shape == (1, 50, 2)


def test_the_run_starts_by_stating_its_false_alarm_budget(caplog):
    """The demo's budget (12 epochs, judged from 2): the early test's z and the others' z, once."""
    evaluator = PostEpochEvaluator("2+", total_epochs=12)
    with caplog.at_level("INFO", logger="engine.monitors.post_epoch"):
        evaluator.on_train_start(None)
    assert caplog.messages == ["Health report: false-alarm budget 5% per run: the early no-signal test needs "
                               "z <= -2.33, each of the run's 46 tests |z| >= 3.13"]
    caplog.clear()
    with caplog.at_level("INFO", logger="engine.monitors.post_epoch"):
        evaluator.on_train_start(SimpleNamespace(data=SimpleNamespace(is_main_process=False)))
    assert caplog.messages == []  # under DDP only rank 0 says it
