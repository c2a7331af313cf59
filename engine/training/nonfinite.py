"""Non-finite guard: a NaN/Inf loss or gradient skips the update instead of poisoning the run."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

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

    @staticmethod
    def non_finite(loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> torch.Tensor:
        """``(2,)`` bool tensor on the loss's device: (loss non-finite, gradients non-finite); no host sync.

        The Trainer reads it together with the other ranks' (``engine.runtime.distributed.any_rank``),
        so every rank skips or steps alike.
        """
        grads = torch.isfinite(grad_norm) if grad_norm is not None else torch.ones((), dtype=torch.bool)
        return ~torch.stack([torch.isfinite(loss).reshape(()), grads.to(loss.device).reshape(())])

    def record(self, loss_finite: bool, grads_finite: bool, step: int, lr: float, fp16_scaler: bool) -> None:
        """Count a good or skipped update; raise ``TrainingDivergedError`` past the limit.

        With an fp16 GradScaler, finite loss with overflowing gradients is the scaler's normal work
        (a few skips while it finds its scale, then about one per growth interval of 2000 steps):
        logged at INFO. A non-finite loss, or non-finite gradients without a scaler, is a warning.
        """
        if loss_finite and grads_finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total_skipped += 1
        counts = f"{self.consecutive} in a row, {self.total_skipped} in total"
        if fp16_scaler and loss_finite:
            logger.info("Skipped update %d: fp16 gradient overflow, the GradScaler lowers its scale (%s; normal "
                        "at the start of an fp16 run and now and then); weights and EMAs untouched", step, counts)
        else:
            logger.warning("Skipped update %d: NaN/Inf %s at LR %.3g (%s); weights and EMAs untouched", step,
                           "gradient" if loss_finite else "loss", lr, counts)
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
