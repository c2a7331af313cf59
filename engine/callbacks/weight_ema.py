"""Weight EMA: ``shadow = decay * shadow + (1 - decay) * weights`` over parameters AND buffers.

Updated once per optimizer step with one ``torch._foreach_lerp_`` over tensor lists built once
(timm's ``ModelEmaV3`` rebuilds them every update), so the update costs one fused kernel chain.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from engine.training.callback import Callback, Order, StepOutput

logger = logging.getLogger(__name__)


class WeightEMA:
    """An exponential moving average of a model's floating state (parameters and buffers).

    Args:
        model: the live model; the shadow starts as an exact copy of it.
        decay: EMA decay; the averaging window is about ``1 / (1 - decay)`` updates
            (``engine.monitors.averaging_windows.window``, stated at the start of a run).
        warmup: ramp the decay as ``min(decay, (1 + step) / (10 + step))`` so early updates
            forget the (random or stale) starting weights quickly.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).eval()
        self.shadow.requires_grad_(False)
        self._bind(model)

    def _bind(self, model: nn.Module) -> None:
        """Pair shadow and live tensors once; ``state_dict`` keeps buffers and parameters alike."""
        live = model.state_dict(keep_vars=True)
        shadow = self.shadow.state_dict(keep_vars=True)
        self._float_pairs: List = []
        self._other_pairs: List = []
        for key, shadow_tensor in shadow.items():
            target = self._float_pairs if shadow_tensor.is_floating_point() else self._other_pairs
            target.append((shadow_tensor.data, live[key].data))
        self._shadow_floats = [pair[0] for pair in self._float_pairs]
        self._live_floats = [pair[1] for pair in self._float_pairs]
        self._bound_model = model

    def decay_at(self, step: int) -> float:
        """Decay used for the update that makes global step ``step`` (1-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the shadow towards ``model`` once, for optimizer step ``step``."""
        if model is not self._bound_model:
            self._bind(model)
        weight = 1.0 - self.decay_at(step)
        if self._shadow_floats:
            torch._foreach_lerp_(self._shadow_floats, self._live_floats, weight)
        for shadow_tensor, live_tensor in self._other_pairs:
            shadow_tensor.copy_(live_tensor)  # integer buffers (e.g. counters) are copied, not averaged

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Restart the shadow from ``model``'s current weights (EMA enabled on resume)."""
        self.shadow.load_state_dict(model.state_dict())

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)


class WeightEMACallback(Callback):
    """Keeps a ``WeightEMA`` of the trained model and validates it beside the base weights.

    Adds ``ema_*`` keys (``ema_iou``, ``ema_dice``, ``ema_mae``, ``ema_loss``) to the epoch metrics
    and offers the shadow as ``trainer.averaged_models["ema"]`` (preview, best-checkpoint choice).
    Its checkpoint state is the shadow itself; a resume from a checkpoint without one starts the
    shadow from the resumed weights.
    """

    name = "weight_ema"
    order = Order.WEIGHTS  # updated before monitors and logging look at the step

    def __init__(self, decay: float, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.ema: Optional[WeightEMA] = None
        self._model: Optional[nn.Module] = None

    def setup(self, trainer) -> None:
        self._model = trainer.unwrapped_model
        self.ema = WeightEMA(self._model, self.decay, self.warmup)
        trainer.averaged_models["ema"] = self.ema.shadow

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        self.ema.update(trainer.unwrapped_model, step.step)

    def on_validation(self, trainer, metrics: Dict[str, Any]) -> None:
        ema_metrics = trainer.validate(self.ema.shadow)
        metrics.update({f"ema_{key}": value for key, value in ema_metrics.items()})

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "shadow": self.ema.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the shadow; without one (EMA enabled on resume) copy the resumed weights."""
        if state.get("shadow") is None:
            logger.info("Checkpoint has no EMA weights: the EMA shadow starts from the loaded weights.")
            self.ema.copy_from(self._model)
            return
        self.ema.load_state_dict(state["shadow"])
