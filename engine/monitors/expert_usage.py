"""Expert-usage monitor: the router's per-expert dispatch share (EMA) in TensorBoard and the epoch record.

The share is the model's own report, ``SegmentationOutput.expert_fractions`` (the EMA the router
keeps for its balance loss; it sums to 1 over experts), which the Trainer passes on in
``StepOutput.expert_fractions``. No step syncs: epoch statistics accumulate on the device and are
read once per log step / epoch.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch

from engine.training.callback import Callback, StepOutput, is_main_process

logger = logging.getLogger(__name__)


class ExpertUsageMonitor(Callback):
    """Writes ``moe/expert_<i>`` at log steps, ``record["expert_usage"]`` (epoch-mean shares) per epoch,
    and warns on collapse: one expert above ``dominant_share`` during a whole epoch, or an expert
    below ``unused_share`` during a whole epoch.

    With top-k > 1 every image spreads ``1/k`` over k experts, so one expert can hold at most
    ``1/k`` of the dispatches; collapse then shows up as unused experts.

    Args:
        log_interval: optimizer steps between TensorBoard writes (``--log-interval``).
        dominant_share: share above which a single expert dominates.
        unused_share: share below which an expert counts as unused.
    """

    name = "expert_usage"

    def __init__(self, log_interval: int = 20, dominant_share: float = 0.9, unused_share: float = 0.01):
        self.log_interval = log_interval
        self.dominant_share, self.unused_share = dominant_share, unused_share
        self._reported_idle = False
        self.last_usage: List[float] = []
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._sum: Optional[torch.Tensor] = None  # (E,) sum of shares over the epoch's steps
        self._extremes: Optional[torch.Tensor] = None  # (E + 1,): max share per expert, -min of the top share
        self._steps = 0

    def on_epoch_start(self, trainer) -> None:
        self._reset_epoch()

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        if step.expert_fractions is None:
            if not self._reported_idle:
                logger.info("Expert usage monitor: the model reports no expert fractions (no MoE router); idle")
                self._reported_idle = True
            return
        shares = step.expert_fractions.float()
        extremes = torch.cat([shares, -shares.max().reshape(1)])
        if self._sum is None:
            self._sum, self._extremes = shares.clone(), extremes
        else:
            self._sum = self._sum + shares
            self._extremes = torch.maximum(self._extremes, extremes)
        self._steps += 1
        if step.is_log_step(self.log_interval) and trainer.is_logging:
            # one small copy on a step where the logging callback syncs anyway
            for index, share in enumerate(shares.tolist()):
                trainer.log_scalar(f"moe/expert_{index}", share, step.step)

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        if self._sum is None:
            return
        values = torch.cat([self._sum / self._steps, self._extremes]).tolist()  # one sync per epoch
        num_experts = self._sum.numel()
        mean, peak, lowest_top = values[:num_experts], values[num_experts:-1], -values[-1]
        self.last_usage = [round(share, 6) for share in mean]
        record["expert_usage"] = self.last_usage
        alerts = usage_alerts(peak, lowest_top, self.dominant_share, self.unused_share)
        if alerts:
            record["expert_alerts"] = alerts
            if is_main_process(trainer):
                for alert in alerts:
                    logger.warning("Expert usage, epoch %d: %s", record["epoch"], alert)
        self._reset_epoch()

    def state_dict(self) -> Dict[str, Any]:
        return {"last_usage": list(self.last_usage)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_usage = [float(share) for share in state.get("last_usage", [])]


def usage_alerts(peak: List[float], lowest_top: float, dominant_share: float = 0.9,
                 unused_share: float = 0.01) -> List[str]:
    """Collapse findings from one epoch's extremes.

    Args:
        peak: per expert, the highest share seen during the epoch (``E`` floats).
        lowest_top: the lowest value of the largest share seen during the epoch.
        dominant_share, unused_share: see ``ExpertUsageMonitor``.

    Returns:
        Sentences naming the problem and the fix (empty when routing is healthy).
    """
    if len(peak) < 2:  # one expert takes all the routing by construction (--num-experts 1): nothing collapsed
        return []
    alerts = []
    top = max(range(len(peak)), key=lambda index: peak[index])
    if lowest_top > dominant_share:
        alerts.append(f"expert {top} took more than {dominant_share * 100:g} % of the routing for the whole epoch "
                      "(router collapse); raise --moe-loss-weight (e.g. x10) or --router-noise")
    unused = [index for index, share in enumerate(peak) if share < unused_share]
    if unused:
        alerts.append(f"expert(s) {', '.join(map(str, unused))} stayed below {unused_share * 100:g} % of the routing "
                      "for the whole epoch (unused); raise --moe-loss-weight or --router-noise")
    return alerts
