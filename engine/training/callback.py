"""The callback protocol through which every optional feature plugs into the ``Trainer``.

Call order (pseudo-code of ``Trainer.__init__`` and ``Trainer.fit``)::

    setup(trainer)                                    # once, in Trainer(...), before any resume
    try:
        on_train_start(trainer)
        for epoch in remaining epochs:
            on_epoch_start(trainer)                   # stage, loaders, unfreezing already set
            for each micro-batch:
                forward, loss, scaled backward
                if last micro-batch of its accumulation window:
                    unscale, clip, optimizer step
                    on_optimizer_step(trainer, step)  # once per update, never per micro-batch
                    if trainer.should_stop:
                        on_stop_mid_epoch(trainer)    # e.g. write last.pth at this exact position
                        leave the loop
            metrics = trainer.validate(model)         # base weights
            on_validation(trainer, metrics)           # callbacks may add keys (e.g. EMA IoU)
            on_epoch_end(trainer, record)             # record: the metrics.jsonl row
        on_train_end(trainer)
    except BaseException as error:
        on_exception(trainer, error)                  # then the error propagates
    finally:
        teardown(trainer)                             # always: restore signal handlers, close writers

Within each hook, callbacks run in ascending ``order`` (ties: the order they were added), so the
dependencies between them are declared, not implied by a list position: ``Order`` names the slots.
Every callback is checkpointed through ``state_dict()`` / ``load_state_dict()`` under its ``name``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)



def is_main_process(trainer) -> bool:
    """Rank 0 (or a single process): the one that prints warnings and reports."""
    return bool(getattr(getattr(trainer, "data", None), "is_main_process", True))


@dataclass
class StepOutput:
    """What ``on_optimizer_step`` receives; tensors stay on the device (no host sync).

    Attributes:
        loss: mean training loss over the update's window (scalar tensor, detached).
        lr: the head/decoder LR used for this update.
        grad_norm: total gradient norm before clipping (scalar tensor) or None without clipping.
        step: global optimizer step after this update (1-based).
        step_in_epoch: update index within the epoch (1-based).
        steps_in_epoch: updates in this epoch.
        expert_fractions: ``(E,)`` the router's dispatch-share EMA after the window's last
            micro-batch (from ``SegmentationOutput``), or None for a model without experts.
        loss_terms: per-term losses of the window, ``(K,)`` detached, in the order of
            ``loss_term_names`` (``<term>_raw``, and ``<term>_normalized`` under
            ``--loss-normalization ema``); each the window's sample-weighted mean, like ``loss``.
            None when nothing logs them (no log sink, or a criterion without ``term_names``).
        loss_term_names: tag suffixes of ``loss_terms`` (TensorBoard ``loss/<name>``).
    """

    loss: torch.Tensor
    lr: float
    grad_norm: Optional[torch.Tensor]
    step: int
    step_in_epoch: int
    steps_in_epoch: int
    expert_fractions: Optional[torch.Tensor] = None
    loss_terms: Optional[torch.Tensor] = None
    loss_term_names: Tuple[str, ...] = ()

    def is_log_step(self, log_interval: int) -> bool:
        """The steps at which logging copies buffered values to the host: an epoch's first and last
        updates and every ``log_interval``-th; monitors that log use the same steps (same syncs)."""
        return self.step_in_epoch == 1 or self.step % log_interval == 0 or self.step_in_epoch == self.steps_in_epoch


class Order:
    """Slots for ``Callback.order``; lower runs first in every hook."""

    CONTROL = 0  # stop requests (signals, time budget, epoch quota) before anything reacts to a step
    WEIGHTS = 10  # the weight EMA: updated before monitors and logging read the step
    MONITOR = 20  # health monitors: add fields (EMA loss, expert usage, drift) to the record
    DIAGNOSIS = 30  # the post-epoch diagnosis reads what the monitors added
    LOGGING = 40  # console, TensorBoard and metrics.jsonl write the completed record
    CHECKPOINT = 100  # last: a save sees every other callback's state for the step


class Callback:
    """Base class: override the hooks you need. ``name`` keys the checkpoint state."""

    name: str = "callback"
    order: int = Order.MONITOR

    def setup(self, trainer) -> None: ...

    def on_train_start(self, trainer) -> None: ...

    def on_epoch_start(self, trainer) -> None: ...

    def on_optimizer_step(self, trainer, step: StepOutput) -> None: ...

    def on_stop_mid_epoch(self, trainer) -> None: ...

    def on_validation(self, trainer, metrics: Dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None: ...

    def on_train_end(self, trainer) -> None: ...

    def on_exception(self, trainer, error: BaseException) -> None: ...

    def teardown(self, trainer) -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class CallbackList:
    """Calls each hook on every callback in ``order``; ``None`` entries are dropped."""

    def __init__(self, callbacks: Iterable[Optional[Callback]] = ()):
        self.callbacks: List[Callback] = []
        for callback in callbacks:
            if callback is not None:
                self.add(callback)

    def add(self, callback: Callback) -> None:
        """Insert ``callback`` at its ``order`` (after callbacks of the same order)."""
        if any(existing.name == callback.name for existing in self.callbacks):
            raise ValueError(f"callback names must be unique; {callback.name!r} is already added")
        position = sum(1 for existing in self.callbacks if existing.order <= callback.order)
        self.callbacks.insert(position, callback)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def call_quietly(self, hook: str, *args) -> None:
        """Like ``call``, but a callback that raises is logged and the others still run (cleanup)."""
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(*args)
            except Exception as error:  # noqa: BLE001 - cleanup must reach every callback
                logger.warning("%s.%s failed: %s", type(callback).__name__, hook, error)

    def state_dict(self) -> Dict[str, Dict[str, Any]]:
        return {callback.name: callback.state_dict() for callback in self.callbacks}

    def load_state_dict(self, states: Dict[str, Dict[str, Any]]) -> None:
        """Restore every callback; one absent from ``states`` (e.g. enabled on resume) gets ``{}``
        and starts fresh from the restored run."""
        for callback in self.callbacks:
            callback.load_state_dict(states.get(callback.name, {}))
