"""Grad-norm monitor: the total gradient norm of every update, against an exploding and a vanishing bound.

The norms stay on the device and are read once every ``interval`` updates (the gradient drift monitor's
interval, ``--grad-monitor-interval``), folded into a count above ``exploding``, a count below
``vanishing`` and their maximum: no per-step host sync.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional

import torch

from engine.monitors.loss_ema import LossEMA
from engine.training.callback import Callback, StepOutput, is_main_process

logger = logging.getLogger(__name__)


def lr_advice(stage: int, lr: float, grad_clip: float) -> str:
    """The actions both gradient monitors suggest: halve the stage's LR, tighten or enable clipping."""
    flag = "--stage2-lr" if stage == 2 else "--lr"
    clip = (f"tighten gradient clipping (--grad-clip {grad_clip:g} -> {0.7 * grad_clip:.2g})"
            if grad_clip > 0 else "enable gradient clipping (--grad-clip 1.0)")
    return f"halve the LR ({flag} {lr:.3g} -> {lr / 2:.3g}); {clip}"


class GradNormMonitor(Callback):
    """Watches the total grad norm on every update and reports every ``interval`` updates.

    Args:
        interval: optimizer steps between reports (``--grad-monitor-interval``).
        grad_clip: the run's ``--grad-clip``, quoted in the advice.
        exploding, vanishing: total grad-norm bounds that warn. With ``grad_clip`` on, updates above
            ``exploding`` are clipped, and a healthy from-scratch run has them while it learns
            (measured: 1-16 per healthy synthetic run of 320 updates, norms up to 27), so they warn
            only while the loss is rising: its short EMA above ``LOSS_RISE`` x its lowest value in
            the stage. Otherwise they are logged at INFO.
    """

    name = "grad_norm"
    LOSS_RISE = 1.2  # a rise of the short loss EMA that batch noise does not reach (about 10 updates)

    def __init__(self, interval: int = 50, grad_clip: float = 1.0, exploding: float = 10.0, vanishing: float = 1e-6):
        if interval < 1:
            raise ValueError(f"gradient monitor interval must be >= 1, got {interval}")
        self.interval, self.grad_clip = interval, grad_clip
        self.exploding, self.vanishing = exploding, vanishing
        self._norms: List[torch.Tensor] = []  # grad norms since the last report (device)
        self._norm_stats: Optional[torch.Tensor] = None  # folded [count > exploding, count < vanishing, max]
        self._updates = 0  # optimizer steps since the last report
        self._loss = LossEMA(beta=0.9)  # short: does the loss rise while the norms spike?
        self._lowest_loss: Dict[int, float] = {}  # stage -> lowest short loss EMA at a report

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        self._updates += 1
        if step.loss is not None:
            self._loss.update(step.loss.detach().float().reshape(()))
        if step.grad_norm is not None:
            self._norms.append(step.grad_norm.detach().float().reshape(()))
            if len(self._norms) >= 256:
                self._fold_norms()
        if step.step % self.interval == 0:
            self._report(trainer, step)

    def _fold_norms(self) -> None:
        """Reduce the buffered grad norms into ``[count > exploding, count < vanishing, max]`` (device)."""
        if not self._norms:
            return
        norms = torch.stack(self._norms)
        stats = torch.stack([(norms > self.exploding).sum().float(), (norms < self.vanishing).sum().float(),
                             norms.max()])
        if self._norm_stats is not None:
            stats = torch.stack([stats[0] + self._norm_stats[0], stats[1] + self._norm_stats[1],
                                 torch.maximum(stats[2], self._norm_stats[2])])
        self._norm_stats, self._norms = stats, []

    def _report(self, trainer, step: StepOutput) -> None:
        """One host copy of the norm statistics, the last norm and the short loss EMA; TensorBoard and warnings."""
        self._fold_norms()
        stats, updates = self._norm_stats, self._updates
        self._norm_stats, self._updates = None, 0
        if stats is None or step.grad_norm is None:
            return
        loss = self._loss.value if self._loss.value is not None else torch.full((), math.nan)
        device = step.grad_norm.device
        exploding, vanishing, peak, grad_norm, loss_ema = torch.cat(
            [stats.to(device), step.grad_norm.detach().float().reshape(1),
             loss.to(device, torch.float32).reshape(1)]).tolist()
        trainer.log_scalar("gradient_monitor/grad_norm", grad_norm, step.step)
        loss_rising = self._loss_rising(getattr(trainer, "stage", 1), loss_ema)
        if is_main_process(trainer):
            self._warn(trainer, step, int(exploding), int(vanishing), peak, updates, loss_rising)

    def _loss_rising(self, stage: int, loss_ema: float) -> bool:
        """Whether the short loss EMA is above ``LOSS_RISE`` x its lowest reported value in ``stage``."""
        if not math.isfinite(loss_ema):
            return True  # a non-finite loss is never "falling"
        lowest = min(self._lowest_loss.get(stage, loss_ema), loss_ema)
        self._lowest_loss[stage] = lowest
        return loss_ema > self.LOSS_RISE * lowest

    def _warn(self, trainer, step: StepOutput, exploding: int, vanishing: int, peak: float, updates: int,
              loss_rising: bool = True) -> None:
        if exploding and self.grad_clip > 0 and not loss_rising:
            # Clipped updates stay bounded: a from-scratch model often runs here while learning well.
            logger.info("Clipped gradient spikes: %d of the last %d updates had a total grad norm > %g (max %.3g) "
                        "up to step %d; --grad-clip %g scaled them down and the loss is not rising: harmless.",
                        exploding, updates, self.exploding, peak, step.step, self.grad_clip)
        elif exploding:
            actions = lr_advice(getattr(trainer, "stage", 1), step.lr, self.grad_clip)
            if self.grad_clip > 0:
                advice = (f"--grad-clip {self.grad_clip:g} scaled these updates down, but the loss is rising "
                          f"(short loss EMA above {self.LOSS_RISE:g} x its lowest in this stage). Actions: {actions}")
            else:
                advice = f"Actions: {actions}"
            logger.warning("Exploding gradients: %d of the last %d updates had a total grad norm > %g (max %.3g) "
                           "up to step %d (LR %.3g). %s.", exploding, updates, self.exploding, peak,
                           step.step, step.lr, advice)
        if vanishing:
            logger.warning("Vanishing gradients: %d of the last %d updates had a total grad norm < %g up to step "
                           "%d (LR %.3g): check that the trained layers are not frozen and the loss is not "
                           "saturated.", vanishing, updates, self.vanishing, step.step, step.lr)
