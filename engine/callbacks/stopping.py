"""Callbacks that end an invocation cleanly, with a checkpoint: time budget and epoch quota."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional

from engine.training.callback import Callback, Order, StepOutput
from engine.training.run_config import how_to_continue

logger = logging.getLogger(__name__)


class TimeLimitCallback(Callback):
    """Stops before ``limit_seconds`` of wall time (e.g. Kaggle's 12 h) with ``last.pth`` saved.

    The stop is requested once the elapsed time plus a safety margin (the longest optimizer step
    seen, times two, plus a fixed reserve for validation and saving) would cross the limit.

    Args:
        limit_seconds: wall-clock budget of this invocation.
        reserve_seconds: time kept free for the final save.
        clock: seconds from a monotonic clock (tests pass a fake one).
    """

    name = "time_limit"
    order = Order.CONTROL

    def __init__(self, limit_seconds: float, reserve_seconds: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.limit_seconds = limit_seconds
        self.reserve_seconds = reserve_seconds if reserve_seconds is not None else min(300.0, 0.02 * limit_seconds)
        self.clock = clock
        self._start = clock()
        self._last = self._start
        self._longest_step = 0.0

    def on_train_start(self, trainer) -> None:
        self._start = self._last = self.clock()

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        now = self.clock()
        self._longest_step = max(self._longest_step, now - self._last)
        self._last = now
        if now - self._start + 2 * self._longest_step + self.reserve_seconds >= self.limit_seconds:
            config = trainer.config
            trainer.request_stop(f"time limit of {config.time_limit or f'{self.limit_seconds:g}s'} reached; "
                                 + how_to_continue(config.checkpoint_dir, config.time_limit))


class StopAfterEpochsCallback(Callback):
    """Ends this invocation after ``epochs`` more epochs; the schedule still targets ``--epochs``."""

    name = "stop_after_epochs"
    order = Order.CONTROL

    def __init__(self, epochs: int):
        self.epochs = epochs
        self._done = 0

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        self._done += 1
        if self._done >= self.epochs and trainer.epoch < trainer.config.epochs:
            config = trainer.config
            trainer.request_stop(f"--stop-after-epochs {self.epochs} reached at epoch {record['epoch']}; "
                                 + how_to_continue(config.checkpoint_dir, config.time_limit))
