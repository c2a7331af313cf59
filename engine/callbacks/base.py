"""The callback protocol through which every optional feature plugs into the ``Trainer``.

Call order (pseudo-code of ``Trainer.fit``)::

    on_train_start(trainer)
    for epoch in remaining epochs:
        on_epoch_start(trainer)                       # stage, loaders, unfreezing already set
        for each micro-batch:
            forward, loss, scaled backward
            if last micro-batch of its accumulation window:
                unscale, clip, optimizer step
                on_optimizer_step(trainer, step)      # once per update, never per micro-batch
                if trainer.should_stop: save and return
        metrics = trainer.validate(model)             # base weights
        on_validation(trainer, metrics)               # callbacks may add keys (e.g. EMA IoU)
        on_epoch_end(trainer, record)                 # record: the metrics.jsonl row
        if trainer.should_stop: break
    on_train_end(trainer)

Every callback is checkpointed through ``state_dict()`` / ``load_state_dict()`` under its ``name``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

import torch


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
    """

    loss: torch.Tensor
    lr: float
    grad_norm: Optional[torch.Tensor]
    step: int
    step_in_epoch: int
    steps_in_epoch: int


class Callback:
    """Base class: override the hooks you need. ``name`` keys the checkpoint state."""

    name: str = "callback"

    def on_train_start(self, trainer) -> None: ...

    def on_epoch_start(self, trainer) -> None: ...

    def on_optimizer_step(self, trainer, step: StepOutput) -> None: ...

    def on_validation(self, trainer, metrics: Dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None: ...

    def on_train_end(self, trainer) -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class CallbackList:
    """Calls each hook on every callback in order; ``None`` entries are dropped."""

    def __init__(self, callbacks: Iterable[Optional[Callback]]):
        self.callbacks: List[Callback] = [callback for callback in callbacks if callback is not None]
        names = [callback.name for callback in self.callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique, got {names}")

    def __iter__(self):
        return iter(self.callbacks)

    def get(self, name: str) -> Optional[Callback]:
        return next((callback for callback in self.callbacks if callback.name == name), None)

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def state_dict(self) -> Dict[str, Dict[str, Any]]:
        return {callback.name: callback.state_dict() for callback in self.callbacks}

    def load_state_dict(self, states: Dict[str, Dict[str, Any]]) -> None:
        """Restore the callbacks present in ``states``; missing ones start fresh, silently."""
        for callback in self.callbacks:
            if callback.name in states:
                callback.load_state_dict(states[callback.name])
