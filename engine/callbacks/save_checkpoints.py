"""Checkpointing callback: ``last.pth`` every epoch (and every N minutes), ``best_model.pth``,
``epoch_N.pth`` history, and the resolved ``config.yaml`` beside them."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from engine.checkpoint.files import atomic_save, capture_rng_state, remove_stale_temp_files
from engine.checkpoint.format import FORMAT_VERSION, model_signature
from engine.training.callback import Callback, Order, StepOutput

logger = logging.getLogger(__name__)


METRIC_NAMES = {"iou": "IoU", "sm": "S-measure", "mae": "MAE", "wfm": "weighted F"}


def epoch_best(record: Dict[str, Any], metric: str = "iou") -> Tuple[float, str]:
    """The score (higher is better: MAE counts negated) by which an epoch competes for
    ``best_model.pth`` under ``--best-metric``, and which weights earn it: the base weights, or the
    EMA when it scores better. ``report`` marks the best epoch with the same rule."""
    sign = -1.0 if metric == "mae" else 1.0
    base, ema = record[f"val_{metric}"], record.get(f"val_{metric}_ema")
    base_score, ema_score = sign * base, None if ema is None else sign * ema
    return (ema_score, "ema") if ema_score is not None and ema_score > base_score else (base_score, "base")


def build_payload(trainer) -> Dict[str, Any]:
    """The Trainer's state plus the metadata a checkpoint file carries (``engine.checkpoint.format``)."""
    return {
        "version": FORMAT_VERSION,
        "trainer": trainer.state_dict(),
        "rng": capture_rng_state(),
        "config": trainer.config.to_dict(),
        "world_size": trainer.distributed.world_size,
        "model_signature": model_signature(trainer.config),
        "best_metric": trainer.config.best_metric,
        "data": trainer.data.fingerprint(),
    }


class CheckpointCallback(Callback):
    """Saves checkpoints atomically. It runs last in every hook (``Order.CHECKPOINT``), so every
    other callback's state for the step is already updated when it saves.

    Args:
        folder: the checkpoint directory.
        keep_epochs: ``epoch_N.pth`` files kept (0: none).
        save_every_minutes: also write ``last.pth`` mid-epoch at this period (None: off).
    """

    name = "checkpoint"
    order = Order.CHECKPOINT

    def __init__(self, folder: Path, keep_epochs: int = 3, save_every_minutes: Optional[float] = None,
                 best_metric: str = "iou"):
        self.folder = Path(folder)
        self.best_metric = best_metric
        self.keep_epochs = keep_epochs
        self.save_every_seconds = save_every_minutes * 60 if save_every_minutes else None
        self.best_score = float("-inf")  # epoch_best's score of the best epoch so far
        self.best_epoch = 0
        self.best_weights = "base"
        self._last_save = time.monotonic()

    def on_train_start(self, trainer) -> None:
        removed = remove_stale_temp_files(self.folder)
        if removed:
            logger.info("Removed %d temporary file(s) left by an interrupted save in %s", removed, self.folder)
        (self.folder / "config.yaml").write_text(yaml.safe_dump(trainer.config.to_dict(), sort_keys=False))
        self._last_save = time.monotonic()

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        if self.save_every_seconds and time.monotonic() - self._last_save >= self.save_every_seconds:
            self.save_last(trainer)

    def on_stop_mid_epoch(self, trainer) -> None:
        self.save_last(trainer)

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        score, weights = epoch_best(record, self.best_metric)
        improved = score > self.best_score or not (self.folder / "best_model.pth").exists()
        if improved:
            self.best_score, self.best_epoch, self.best_weights = score, record["epoch"], weights
        payload = build_payload(trainer)
        payload["metrics"] = dict(record)
        payload["best_weights"] = self.best_weights
        atomic_save(payload, self.folder / "last.pth")
        if improved:
            payload["best_weights"] = weights
            atomic_save(payload, self.folder / "best_model.pth")
            logger.info("New best %s %.4f (%s weights) at epoch %d -> best_model.pth", METRIC_NAMES[self.best_metric],
                        abs(score), weights,
                        record["epoch"])
        if self.keep_epochs > 0:
            atomic_save(payload, self.folder / f"epoch_{record['epoch']}.pth")
            self._prune_history()
        self._last_save = time.monotonic()

    def save_last(self, trainer) -> None:
        """Write ``last.pth`` at the current position (possibly mid-epoch)."""
        payload = build_payload(trainer)
        payload["best_weights"] = self.best_weights
        atomic_save(payload, self.folder / "last.pth")
        self._last_save = time.monotonic()
        logger.info("Saved last.pth at epoch %d, batch %d (step %d)", trainer.epoch + 1, trainer.batch_in_epoch,
                    trainer.global_step)

    def _prune_history(self) -> None:
        history = sorted(self.folder.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        for old in history[:-self.keep_epochs]:
            old.unlink(missing_ok=True)

    def state_dict(self) -> Dict[str, Any]:
        return {"best_metric": self.best_metric, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "best_weights": self.best_weights}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        saved_metric = str(state.get("best_metric", "iou"))  # checkpoints before --best-metric kept IoU
        if state and saved_metric != self.best_metric:
            logger.info("--best-metric changed from %s to %s: the best checkpoint is chosen anew from this epoch on",
                        saved_metric, self.best_metric)
            return
        self.best_score = float(state.get("best_score", state.get("best_iou", float("-inf"))))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.best_weights = str(state.get("best_weights", "base"))
