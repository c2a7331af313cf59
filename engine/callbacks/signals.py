"""Graceful stop on SIGTERM / SIGINT (Kaggle ending a session, Ctrl-C).

The first signal asks the Trainer to stop after the current optimizer step; the Trainer then
saves ``last.pth`` at that exact position (mid-epoch resume continues from the next batch). A
second signal restores the default handler behaviour and exits at once, or right after the
checkpoint being written when it arrives during a save (the file is never left half-written).
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Dict, Optional

from engine.checkpoint.files import exit_after_save, save_in_progress
from engine.training.callback import Callback, Order

logger = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)


class SignalStopCallback(Callback):
    """Installs the handlers for the duration of ``fit`` (main thread only); ``teardown`` puts the
    previous handlers back, also when training raised.

    Args:
        continuation: what the stop message adds, the commands that continue the run
            (``run_config.how_to_continue``).
    """

    name = "signals"
    order = Order.CONTROL

    def __init__(self, continuation: str = ""):
        self.continuation = continuation
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self._trainer = None

    def on_train_start(self, trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        self._trainer = trainer
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # second signal: leave now, but never in the middle of a save
            self._restore()
            if save_in_progress():
                exit_after_save(128 + signum)
                return
            raise SystemExit(128 + signum)
        self.received = signum
        name = signal.Signals(signum).name
        # Only flags here: logging or saving inside a signal handler can deadlock.
        self._trainer.request_stop(f"{name} received: finishing the current step and saving last.pth (send it "
                                   "again to exit at once)" + (f"; then {self.continuation}" if self.continuation
                                                               else ""), exit_code=128 + signum)

    def teardown(self, trainer) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
