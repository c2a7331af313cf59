"""``--auto-adjust-lr``: halve the current stage's LR when the health report finds a plateau.

The health report (``engine/monitors/post_epoch.py``) only observes: it leaves its findings in
``record["health"]``. This callback runs right after it and acts on them: on a plateau it halves the
current stage's LR through the plan (``StagePlan.scale_lr``, so a resume keeps it), never below
``--min-lr`` and at most once per ``settle_epochs`` epochs, and says what it did in
``record["health"]["lr_adjustment"]`` (``metrics.jsonl`` keeps it) and on the console.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

from engine.checkpoint.format import PLATEAU_CALLBACK
from engine.training.callback import Callback, Order, is_main_process

logger = logging.getLogger(__name__)


class PlateauLRCallback(Callback):
    """Halves the LR on the health report's plateau finding.

    Args:
        min_lr: the LR is never lowered below this (``--min-lr``).
        settle_epochs: epochs a halving is given to show before the next one; the health report's
            plateau window, whose epochs from before a halving would otherwise call it a plateau again.
    """

    name = PLATEAU_CALLBACK  # where a checkpoint keeps its state (older ones: format.upgrade moves it there)
    order = Order.DIAGNOSIS + 1  # after the health report has written record["health"], before logging

    def __init__(self, min_lr: float = 0.0, settle_epochs: int = 3):
        self.min_lr, self.settle_epochs = min_lr, settle_epochs
        self.adjusted_at_epoch = 0

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        health = record.get("health")
        if not health or not health.get("plateau"):
            return
        epoch = record["epoch"]
        if self.adjusted_at_epoch and epoch - self.adjusted_at_epoch < self.settle_epochs:
            return  # give the previous halving time to show
        current = trainer.current_lr
        if current * 0.5 < self.min_lr:
            health["lr_adjustment"] = f"not halved: the LR {current:.3g} is already near --min-lr {self.min_lr:.3g}"
        else:
            scale = trainer.plan.scale_lr(trainer.stage, 0.5)
            self.adjusted_at_epoch = epoch
            health["lr_adjustment"] = (f"LR halved on plateau: {current:.3g} -> {current * 0.5:.3g} (stage "
                                       f"{trainer.stage} LR scale x{scale:.3g}, kept in the plan)")
        if is_main_process(trainer):
            logger.info("  %s", health["lr_adjustment"])  # the health report's last line

    def state_dict(self) -> Dict[str, Any]:
        return {"adjusted_at_epoch": self.adjusted_at_epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.adjusted_at_epoch = int(state.get("adjusted_at_epoch", 0))
