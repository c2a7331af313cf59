"""Loss-EMA monitor: a zero-initialised, bias-corrected EMA of the training loss, kept on the device.

``ema_t = beta * ema_{t-1} + (1 - beta) * loss_t`` with ``ema_0 = 0``, reported as
``ema_t / (1 - beta^t)``: step 1 equals the first loss, and the series equals
``pandas.Series.ewm(alpha=1 - beta, adjust=True).mean()`` (and TensorBoard's smoothing). The
window is about ``1 / (1 - beta)`` updates; the lag about ``beta / (1 - beta)`` updates.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import torch

from engine.training.callback import Callback, StepOutput

logger = logging.getLogger(__name__)


class LossEMA:
    """Bias-corrected EMA of a scalar tensor; every update stays on the tensor's device.

    Args:
        beta: decay in ``[0, 1)``; 0.99 averages over ~100 updates.
    """

    def __init__(self, beta: float = 0.99):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"loss EMA beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.count = 0  # host-side step counter: the bias correction needs no device read
        self.ema: Optional[torch.Tensor] = None  # raw (biased) average, float64 scalar

    def update(self, loss: torch.Tensor) -> torch.Tensor:
        """Fold in one loss; no host sync (one in-place ``lerp_`` and one division).

        Args:
            loss: scalar tensor ``()`` on any device.

        Returns:
            The bias-corrected EMA, a new scalar tensor ``()`` on ``loss.device``.
        """
        if self.ema is None or self.ema.device != loss.device:  # first update, or restored on the CPU
            # float64 (one element: free) keeps beta = 0.999 within 1e-6 of the exact EMA; MPS lacks it.
            dtype = torch.float32 if loss.device.type == "mps" else torch.float64
            self.ema = torch.zeros((), dtype=dtype, device=loss.device) if self.ema is None else \
                self.ema.to(device=loss.device, dtype=dtype)
        self.ema.lerp_(loss.detach().to(self.ema.dtype), 1.0 - self.beta)
        self.count += 1
        return self.ema / (1.0 - self.beta ** self.count)

    @property
    def value(self) -> Optional[torch.Tensor]:
        """The current bias-corrected EMA ``()`` (device tensor), or ``None`` before the first update."""
        if self.ema is None or self.count == 0:
            return None
        return self.ema / (1.0 - self.beta ** self.count)

    def state_dict(self) -> Dict[str, Any]:
        ema = self.ema.detach().cpu().clone() if self.ema is not None else torch.zeros(())
        return {"ema": ema, "count": self.count, "beta": self.beta}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.ema = state["ema"].detach().clone()
        self.count = int(state["count"])


class LossEMAMonitor(Callback):
    """Updates the loss EMA once per optimizer step and writes ``train/loss_ema`` for every step.

    The per-step EMA values stay in a device buffer that is copied to the host (one sync) at the
    logging callback's flush steps, so TensorBoard gets every step without a sync per step.
    Place it *before* the logging callback: the console line then shows the fresh value through
    ``console_extras()``.

    Args:
        beta: EMA decay (``--loss-ema-beta``).
        log_interval: optimizer steps between host copies (``--log-interval``).
    """

    name = "loss_ema"

    def __init__(self, beta: float = 0.99, log_interval: int = 20):
        self.ema = LossEMA(beta)
        self.log_interval = log_interval
        self.last_value: Optional[float] = None  # host copy from the latest flush
        self._pending: List[Tuple[int, torch.Tensor]] = []

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        self._pending.append((step.step, self.ema.update(step.loss)))
        if step.is_log_step(self.log_interval):
            self.flush(trainer)

    def flush(self, trainer) -> None:
        """Copy the buffered EMA values to the host in one transfer and write them to TensorBoard."""
        if not self._pending:
            return
        values = torch.stack([value for _, value in self._pending]).tolist()
        for (step, _), value in zip(self._pending, values):
            trainer.log_scalar("train/loss_ema", value, step)
        self.last_value = values[-1]
        self._pending = []

    def console_extras(self) -> Dict[str, str]:
        """``{"EMA": "y.yyyy"}`` for the console line (empty before the first flush)."""
        return {} if self.last_value is None else {"EMA": f"{self.last_value:.4f}"}

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        self.flush(trainer)
        if self.last_value is not None:
            record["train_loss_ema"] = self.last_value

    def on_train_end(self, trainer) -> None:
        self.flush(trainer)

    def state_dict(self) -> Dict[str, Any]:
        return {"ema_state": self.ema.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``ema_state``; without it (older checkpoint) the EMA starts fresh, silently."""
        ema_state = state.get("ema_state") if isinstance(state, dict) else None
        self.ema = LossEMA(self.ema.beta)
        self.last_value = None
        self._pending = []
        if ema_state is None:
            return
        if abs(float(ema_state.get("beta", self.ema.beta)) - self.ema.beta) > 1e-12:
            logger.info("Loss EMA: checkpoint beta %s differs from --loss-ema-beta %s; starting the EMA fresh",
                        ema_state.get("beta"), self.ema.beta)
            return
        self.ema.load_state_dict(ema_state)
