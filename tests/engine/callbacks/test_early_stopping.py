"""--early-stop-patience: counts epochs without a better --best-metric by the best_model.pth rule,
stops cleanly with last.pth saved and exit code 0, and keeps counting across a real resume."""
import json
from types import SimpleNamespace

import pytest

from engine.callbacks import Callback, Order
from engine.callbacks.early_stopping import EarlyStoppingCallback
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from tests.cli.in_process import run_cli
from tests.conftest import tiny_flags


class FakeTrainer:
    def __init__(self, epochs=100):
        self.config = SimpleNamespace(epochs=epochs)
        self.epoch = 0
        self.stops = []

    def request_stop(self, reason, exit_code=0):
        self.stops.append((self.epoch, reason))


def feed(callback, trainer, records):
    for epoch, record in enumerate(records, start=1):
        trainer.epoch = epoch
        callback.on_epoch_end(trainer, dict(record, epoch=epoch))
        if trainer.stops:
            return epoch
    return None


def test_counts_epochs_without_improvement_on_the_better_of_base_and_ema():
    trainer, callback = FakeTrainer(), EarlyStoppingCallback(patience=2)
    records = [{"val_iou": 0.50}, {"val_iou": 0.40, "val_iou_ema": 0.55},  # the EMA's 0.55 is the new best
               {"val_iou": 0.55}, {"val_iou": 0.60}, {"val_iou": 0.59}, {"val_iou": 0.60}, {"val_iou": 0.70}]
    # epoch 3 ties 0.55 (not better), epoch 4 improves, 5 and 6 do not (a tie is no improvement)
    assert feed(callback, trainer, records) == 6
    assert trainer.stops == [(6, "early stop: val IoU has not improved for 2 epochs (best 0.6000 at epoch 4)")]


def test_mae_counts_lower_as_better_and_one_epoch_reads_singular():
    trainer, callback = FakeTrainer(), EarlyStoppingCallback(patience=1, best_metric="mae")
    assert feed(callback, trainer, [{"val_mae": 0.20}, {"val_mae": 0.10}, {"val_mae": 0.15}]) == 3
    assert trainer.stops[0][1] == "early stop: val MAE has not improved for 1 epoch (best 0.1000 at epoch 2)"


def test_no_request_at_the_last_planned_epoch():
    trainer, callback = FakeTrainer(epochs=3), EarlyStoppingCallback(patience=1)
    assert feed(callback, trainer, [{"val_iou": 0.5}, {"val_iou": 0.6}, {"val_iou": 0.4}]) is None


def test_state_continues_counting_and_a_changed_metric_starts_afresh():
    trainer, first = FakeTrainer(), EarlyStoppingCallback(patience=3)
    feed(first, trainer, [{"val_iou": 0.5}, {"val_iou": 0.4}, {"val_iou": 0.3}])
    state = first.state_dict()
    assert state == {"best_metric": "iou", "best_score": 0.5, "best_epoch": 1, "epochs_without_improvement": 2}
    second = EarlyStoppingCallback(patience=3)
    second.load_state_dict(state)
    trainer.epoch = 4
    second.on_epoch_end(trainer, {"epoch": 4, "val_iou": 0.45})
    assert trainer.stops == [(4, "early stop: val IoU has not improved for 3 epochs (best 0.5000 at epoch 1)")]
    other = EarlyStoppingCallback(patience=3, best_metric="mae")
    other.load_state_dict(state)
    assert other.epochs_without_improvement == 0 and other.best_score == float("-inf")
    with pytest.raises(ValueError, match="patience"):
        EarlyStoppingCallback(patience=0)


SCRIPTED_IOU = [0.30, 0.50, 0.40, 0.45, 0.60, 0.55, 0.50, 0.70]  # validation IoU of epochs 1-8


class ScriptedValidation(Callback):
    """Replaces the base weights' validation IoU by a fixed script, before anything reads it."""

    name = "scripted_validation"
    order = Order.CONTROL

    def on_validation(self, trainer, metrics):
        metrics["iou"] = SCRIPTED_IOU[trainer.epoch]  # trainer.epoch: epochs completed before this one


RUN_FLAGS = tiny_flags(synthetic_train_size=8, synthetic_val_size=4, epochs=8, grad_monitor_interval=0,
                       eval_epochs="none", keep_checkpoints=0)


def test_early_stop_saves_last_and_a_resumed_run_keeps_counting(tmp_path, monkeypatch):
    import engine.build

    build_callbacks = engine.build.build_callbacks
    monkeypatch.setattr(engine.build, "build_callbacks",
                        lambda config, is_main=True: build_callbacks(config, is_main) + [ScriptedValidation()])
    folder = tmp_path / "ckpt"
    first = run_cli("train", *RUN_FLAGS, "--checkpoint-dir", folder, "--early-stop-patience", "2",
                    "--stop-after-epochs", "3")
    assert first.returncode == 0, first.stderr
    saved = load_checkpoint(folder / "last.pth")
    assert progress(saved)["epoch"] == 3
    assert saved["trainer"]["callbacks"]["early_stopping"]["epochs_without_improvement"] == 1
    # --early-stop-patience is not repeated: a resume inherits it with the run's config. A fresh
    # counter would see epochs 4 and 5 improve and stop at epoch 7; the restored one stops at 4.
    resumed = run_cli("train", "--checkpoint-dir", folder, "--resume-from", "auto")
    assert resumed.returncode == 0, resumed.stderr
    reason = "early stop: val IoU has not improved for 2 epochs (best 0.5000 at epoch 2)"
    assert f"INFO Done: {reason}" in resumed.stderr
    saved = load_checkpoint(folder / "last.pth")
    assert progress(saved)["epoch"] == 4 and progress(saved)["batch_in_epoch"] == 0  # last.pth: the final epoch
    assert saved["trainer"]["callbacks"]["early_stopping"] == {
        "best_metric": "iou", "best_score": 0.5, "best_epoch": 2, "epochs_without_improvement": 2}
    assert progress(load_checkpoint(folder / "best_model.pth"))["epoch"] == 2  # the same rule picked it
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["val_iou"] for row in rows] == SCRIPTED_IOU[:4]
