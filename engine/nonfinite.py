"""Non-finite guard: a NaN/Inf loss or gradient skips the update instead of poisoning the run."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Raised after too many non-finite updates in a row; the message says what to do."""


class NonFiniteGuard:
    """Decides per optimizer update whether loss and gradients are finite.

    One host sync per *update* (not per micro-batch): the check must know the answer before the
    optimizer may touch the weights. Skipped updates leave the weights, the weight EMA and every
    monitor untouched.

    Args:
        max_bad_steps: consecutive non-finite updates after which training stops.
    """

    def __init__(self, max_bad_steps: int = 20):
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.total_skipped = 0

    def is_finite(self, loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> bool:
        finite = torch.isfinite(loss)
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm)
        return bool(finite)

    def record(self, finite: bool, step: int, lr: float, saw_scaler: bool) -> None:
        """Count a good or bad update; raise ``TrainingDivergedError`` past the limit."""
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total_skipped += 1
        cause = "fp16 overflow (GradScaler lowers its scale)" if saw_scaler else "NaN/Inf loss or gradient"
        logger.warning("Skipped update %d: %s at LR %.3g (%d in a row, %d in total); weights and EMAs untouched",
                       step, cause, lr, self.consecutive, self.total_skipped)
        if self.consecutive >= self.max_bad_steps:
            raise TrainingDivergedError(
                f"{self.consecutive} non-finite updates in a row at step {step} (LR {lr:.3g}): training diverged. "
                "The last good checkpoint is last.pth; resume it with a lower --lr/--stage2-lr "
                "(e.g. halve it) or a tighter --grad-clip (e.g. 1.0 -> 0.7)")

    def state_dict(self) -> Dict[str, Any]:
        return {"consecutive": self.consecutive, "total_skipped": self.total_skipped}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total_skipped = int(state.get("total_skipped", 0))
