"""Opt-in early stopping on the metric that picks ``best_model.pth`` (``--early-stop-patience``)."""
from __future__ import annotations

import logging
from typing import Any, Dict

from engine.callbacks.save_checkpoints import METRIC_NAMES, epoch_best
from engine.training.callback import Callback, Order

logger = logging.getLogger(__name__)


class EarlyStoppingCallback(Callback):
    """Stops the run after ``patience`` epochs in a row without a better ``--best-metric`` score.

    An epoch improves when ``epoch_best`` (the rule that picks ``best_model.pth``: the better of
    base and EMA weights, MAE negated) scores strictly higher than every earlier epoch. It runs in
    ``on_epoch_end`` at ``Order.CONTROL``, before the checkpoint callback, so the stop is requested
    with the epoch's record and ``last.pth`` is then written for that final epoch, holding this
    callback's counter; a resumed run continues counting from it.

    Args:
        patience: epochs without improvement that end the run (>= 1).
        best_metric: ``--best-metric`` (iou, sm, mae, wfm).
    """

    name = "early_stopping"
    order = Order.CONTROL

    def __init__(self, patience: int, best_metric: str = "iou"):
        if patience < 1:
            raise ValueError(f"early-stopping patience must be >= 1, got {patience}")
        self.patience = patience
        self.best_metric = best_metric
        self.best_score = float("-inf")
        self.best_epoch = 0
        self.epochs_without_improvement = 0

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        score, _ = epoch_best(record, self.best_metric)
        if score > self.best_score:
            self.best_score, self.best_epoch, self.epochs_without_improvement = score, record["epoch"], 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.patience and trainer.epoch < trainer.config.epochs:
            trainer.request_stop(self.reason())

    def reason(self) -> str:
        """The one line that says why the run stopped (logged, and on the ``Done:`` line)."""
        count = self.epochs_without_improvement
        return (f"early stop: val {METRIC_NAMES[self.best_metric]} has not improved for {count} "
                f"epoch{'' if count == 1 else 's'} (best {abs(self.best_score):.4f} at epoch {self.best_epoch})")

    def state_dict(self) -> Dict[str, Any]:
        return {"best_metric": self.best_metric, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "epochs_without_improvement": self.epochs_without_improvement}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue counting; a checkpoint without this state (enabled on resume) or one counted on
        another ``--best-metric`` starts fresh."""
        if not state:
            return
        if str(state.get("best_metric")) != self.best_metric:
            logger.info("Early stopping: --best-metric changed from %s to %s; counting starts afresh",
                        state.get("best_metric"), self.best_metric)
            return
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
