"""Run log: console lines, tqdm postfix, TensorBoard and ``metrics.jsonl``.

It is the Trainer's log sink: ``trainer.log_scalar`` / ``trainer.log_image`` from any callback land
in its ``SummaryWriter``. Step losses and per-term losses (``StepOutput.loss_terms``, written as
``loss/<term>_raw`` / ``loss/<term>_normalized``) stay on the device in a buffer and are copied to
the host together, once per log interval, so logging costs no host sync on the other steps.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from engine.runtime.errors import naming
from engine.training.callback import Callback, Order, StepOutput

logger = logging.getLogger(__name__)


class LoggingCallback(Callback):
    """Writes ``train/step_loss``, ``train/lr``, ``val/*`` and one JSON line per epoch.

    Args:
        folder: checkpoint directory; TensorBoard goes to ``folder/runs``.
        log_interval: optimizer steps between console lines / host copies.
        step_lines: print the per-step console lines (``--progress off``: epoch summaries only).
    """

    name = "logging"
    order = Order.LOGGING  # after the monitors: the record it writes already holds their fields

    def __init__(self, folder: Path, log_interval: int = 20, step_lines: bool = True):
        self.folder = Path(folder)
        self.log_interval = log_interval
        self.step_lines = step_lines  # False (--progress off): epoch summaries only
        self.writer = None
        self._pending: List[StepOutput] = []
        self._resumed_at: Optional[int] = None  # completed epochs at a resume, written on the next row
        self._last_row_epoch = 0  # epoch of the last metrics.jsonl row this run wrote

    def setup(self, trainer) -> None:
        trainer.add_log_sink(self)

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            with naming(self.folder / "runs"):
                self.writer.add_scalar(tag, value, step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            with naming(self.folder / "runs"):
                self.writer.add_image(tag, image, step)

    def on_train_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow import

        self.folder.mkdir(parents=True, exist_ok=True)
        # A resumed run continues after step G, whose events were written already: purge from G + 1
        # what a previous, interrupted session wrote past the resume point.
        purge_step = trainer.global_step + 1 if trainer.global_step else None
        self._resumed_at = trainer.epoch if trainer.global_step else None
        self.writer = SummaryWriter(str(self.folder / "runs"), purge_step=purge_step)
        dropped = trim_history(self.folder / "metrics.jsonl", trainer.epoch)
        if dropped:
            logger.info("metrics.jsonl: dropped %d row(s) of epochs after %d, written after the checkpoint this "
                        "run resumes from", dropped, trainer.epoch)

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        self._pending.append(step)
        if step.is_log_step(self.log_interval):
            self.flush(trainer)

    def flush(self, trainer) -> None:
        """Copy the buffered step losses and per-term losses to the host (one sync) and write them."""
        if not self._pending:
            return
        rows = host_rows(self._pending)
        losses = [row[0] for row in rows]
        with naming(self.folder / "runs"):  # TensorBoard writes in a thread; its errors surface here
            for pending, row in zip(self._pending, rows):
                self.writer.add_scalar("train/step_loss", row[0], pending.step)
                self.writer.add_scalar("train/lr", pending.lr, pending.step)
                for name, value in zip(pending.loss_term_names, row[1:]):
                    self.writer.add_scalar(f"loss/{name}", value, pending.step)
        last = self._pending[-1]
        self._pending = []
        extra = trainer.console_extras()
        line = f"Epoch {trainer.epoch + 1} | Step {last.step_in_epoch}/{last.steps_in_epoch} | Loss: {losses[-1]:.4f}"
        line += "".join(f" | {key}: {value}" for key, value in extra.items())
        line += f" | LR: {last.lr:.3g}"
        if trainer.progress is not None:
            trainer.progress.set_postfix_str(line.split(" | ", 2)[2], refresh=False)
        if self.step_lines:
            logger.info(line)

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        self.flush(trainer)
        step = record["global_step"]
        with naming(self.folder / "runs"):
            for key in ("iou", "dice", "mae", "loss", "sm", "wfm"):
                if f"val_{key}" not in record:  # sm / wfm: only with --best-metric sm | wfm
                    continue
                self.writer.add_scalar(f"val/{key}", record[f"val_{key}"], step)
                if record.get(f"val_{key}_ema") is not None:
                    self.writer.add_scalar(f"val/{key}_ema", record[f"val_{key}_ema"], step)
            self.writer.add_scalar("train/epoch_loss", record["train_loss"], step)
            self.writer.flush()
        row = dict(record)
        if self._resumed_at is not None:  # the first row of a resumed invocation says so (report marks it)
            row["resumed_after_epoch"], self._resumed_at = self._resumed_at, None
        history = self.folder / "metrics.jsonl"
        with naming(history), open(history, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(_finite(row)) + "\n")
        self._last_row_epoch = record["epoch"]
        ema = f" | EMA IoU {record['val_iou_ema']:.4f}" if record.get("val_iou_ema") is not None else ""
        cod = "".join(f", {name} {record[key]:.4f}" for key, name in (("val_sm", "S"), ("val_wfm", "wF"))
                      if record.get(key) is not None)
        logger.info("Epoch %d: Loss %.4f | IoU %.4f%s | LR %.3g  (val loss %.4f, Dice %.4f, MAE %.4f%s, %.0fs)",
                    record["epoch"], record["train_loss"], record["val_iou"], ema, record["lr"],
                    record["val_loss"], record["val_dice"], record["val_mae"], cod, record["seconds"])

    def on_train_end(self, trainer) -> None:
        self.flush(trainer)

    def on_exception(self, trainer, error: BaseException) -> None:
        # The row of an epoch whose checkpoint was not saved (e.g. the disk filled up during the
        # save) would describe weights that exist nowhere: take it back, as a resume would.
        if self._last_row_epoch > trainer.closed_epoch:
            try:
                trim_history(self.folder / "metrics.jsonl", trainer.closed_epoch)
            except OSError as trim_error:  # e.g. the full disk that ended the run: a resume trims it
                logger.warning("metrics.jsonl: could not remove the row of epoch %d, whose checkpoint was not saved "
                               "(%s); a resume removes it", self._last_row_epoch, trim_error.strerror or trim_error)
                return
            logger.warning("metrics.jsonl: removed the row of epoch %d, whose checkpoint was not saved",
                           self._last_row_epoch)

    def teardown(self, trainer) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except OSError as error:  # after the run's own error, or the run's end: say it, do not replace it
                logger.warning("TensorBoard: could not finish writing %s (%s)", self.folder / "runs",
                               error.strerror or error)


def host_rows(steps: List[StepOutput]) -> List[List[float]]:
    """``[loss, *loss_terms]`` of every buffered step, copied to the host in one transfer."""
    flat = torch.cat([step.loss.reshape(1) if step.loss_terms is None
                      else torch.cat([step.loss.reshape(1), step.loss_terms.to(step.loss.dtype)]) for step in steps])
    values = flat.tolist()
    rows, start = [], 0
    for step in steps:
        width = 1 + (0 if step.loss_terms is None else step.loss_terms.numel())
        rows.append(values[start:start + width])
        start += width
    return rows


def trim_history(path: Path, completed_epochs: int) -> int:
    """Drop the rows of epochs after ``completed_epochs`` from ``metrics.jsonl`` (a resume replays
    them); returns how many were dropped. Lines that are not JSON rows are kept as they are."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    # surrogateescape: a damaged line (invalid UTF-8) is kept byte for byte instead of stopping the resume
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True):
        try:
            epoch = json.loads(line).get("epoch")
        except (ValueError, AttributeError):
            epoch = None
        if isinstance(epoch, int) and epoch > completed_epochs:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text("".join(kept), encoding="utf-8", errors="surrogateescape")
        os.replace(temporary, path)
    return dropped


def _finite(record: Dict[str, Any]) -> Dict[str, Any]:
    """JSON has no NaN/Inf: write them as null."""
    return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in record.items()}
