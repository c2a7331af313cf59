"""Gradient drift monitor: per-block gradient gain ``||dL/d input|| / ||dL/d output||`` on sampled steps,
judged against the run's own early gains.

A block's raw gain has no natural healthy value: a downsampling stage or a smoothing conv on a 1-2 px
map sits anywhere from 0.3 to 20 on a healthy run. So each block's gain is divided by its own
baseline, the median of its first ``baseline_checks`` gains in the current stage (stage 2 unfreezes the
encoder, so it sets new baselines). The *relative gain* is the geometric mean of those ratios over the
blocks: about 1 at the start, and in measured healthy runs it settles at 0.7-0.9 as training
proceeds; gradients amplifying on their way back push it up. Every ``interval`` optimizer steps, full
backward hooks are attached for exactly one update (all its micro-batches) and removed right after.
``DriftDetector`` holds the rule (pure, testable). The total grad norm of every update is the other
gradient monitor's (``grad_norm.py``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import statistics
import warnings
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from engine.monitors.grad_norm import lr_advice
from engine.runtime.compile import eager_while_measuring
from engine.training.callback import Callback, StepOutput, is_main_process

logger = logging.getLogger(__name__)
# A block whose input carries no gradient (behind a frozen stage) is simply not measured; torch's
# warning about it would print once per run and alarm users for nothing.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                        "respect to module outputs", category=UserWarning)

Blocks = List[Tuple[str, nn.Module]]


@dataclass
class DriftCheck:
    """Outcome of one check: the numbers for TensorBoard and whether to warn now."""

    mean_gain: float  # plain mean of the raw block gains (for reference)
    relative_gain: Optional[float]  # None while the baselines are being measured
    moving_average: Optional[float]
    drift: float  # relative change of the relative gain vs the oldest in the window
    threshold: float
    streak: int  # consecutive flagged checks, this one included
    alert: bool
    reasons: List[str] = field(default_factory=list)


class DriftDetector:
    """Flags a check when the relative gain exceeds ``gain_threshold``, falls below ``floor`` or has
    risen by more than ``drift_threshold`` vs the oldest check in the window. It warns when a streak of flagged checks
    reaches ``consecutive``, and again every ``rewarn_every`` checks while the streak lasts.

    Defaults from measured runs (the demo's recipe on 160 synthetic scenes, 5 epochs, 2 seeds, 20
    checks each): healthy relative gains stayed in 0.68-0.91 and rose at most +10 % within a 10-check
    window (at 30x the LR with clipping, which still trained, 0.67-1.04 and +19 %), so 2.0 and +50 %
    leave a margin; a run at 25x the LR collapsed (val IoU 0.28 -> 0) while its
    relative gain fell to 0.24 and then 0.08, hence the floor 0.25; see the monitoring guide.

    Args:
        window: checks kept for the moving average and the drift reference.
        gain_threshold: bound on the relative gain (``None``: 2.0).
        drift_threshold: relative rise that flags a check (0.5 = +50 %).
        consecutive: flagged checks in a row before the first warning.
        baseline_checks: checks whose median gain is a block's baseline (per stage).
        rewarn_every: flagged checks between repeated warnings of one streak.
        floor: lower bound on the relative gain.
    """

    DEFAULT_GAIN_THRESHOLD = 2.0

    def __init__(self, window: int = 10, gain_threshold: Optional[float] = None, drift_threshold: float = 0.5,
                 consecutive: int = 3, baseline_checks: int = 3, rewarn_every: int = 10, floor: float = 0.25):
        if window < 1 or consecutive < 1 or baseline_checks < 1 or rewarn_every < 1:
            raise ValueError("drift window, consecutive checks, baseline checks and re-warn period must be >= 1")
        self.window, self.drift_threshold, self.consecutive = window, drift_threshold, consecutive
        self.gain_threshold = self.DEFAULT_GAIN_THRESHOLD if gain_threshold is None else gain_threshold
        self.baseline_checks, self.rewarn_every, self.floor = baseline_checks, rewarn_every, floor
        self.history: deque = deque(maxlen=window)  # relative gains
        self.early: Dict[str, List[float]] = {}  # block -> its first gains in this stage
        self.stage: Optional[int] = None
        self.streak = 0

    def baseline(self, name: str) -> Optional[float]:
        gains = self.early.get(name, [])
        return statistics.median(gains) if len(gains) >= self.baseline_checks else None

    def check(self, block_gains: Mapping[str, float], stage: int = 1) -> DriftCheck:
        """Add one check's finite, positive block gains and decide."""
        if stage != self.stage:  # a new stage trains other blocks: new baselines, new history
            self.stage, self.early, self.streak = stage, {}, 0
            self.history.clear()
        ratios = []
        for name, gain in block_gains.items():
            base = self.baseline(name)
            if base is None:
                self.early.setdefault(name, []).append(float(gain))
            elif base > 0:
                ratios.append(math.log(gain / base))
        mean_gain = sum(block_gains.values()) / max(len(block_gains), 1)
        if not ratios:
            self.streak = 0
            return DriftCheck(mean_gain, None, None, 0.0, self.gain_threshold, 0, False)
        relative = math.exp(sum(ratios) / len(ratios))
        self.history.append(relative)
        oldest = self.history[0]
        drift = (relative - oldest) / oldest if len(self.history) > 1 and oldest > 0 else 0.0
        reasons = []
        if relative > self.gain_threshold:
            reasons.append(f"relative gain {relative:.2f} > {self.gain_threshold:.2f} x the early gains "
                           "(gradients amplifying on their way back)")
        if relative < self.floor:
            reasons.append(f"relative gain {relative:.2f} < {self.floor:.2f} x the early gains (gradients fading on "
                           "their way back, as in a collapsing run)")
        if drift > self.drift_threshold:
            reasons.append(f"relative gain {drift:+.0%} vs {len(self.history) - 1} checks ago")
        self.streak = self.streak + 1 if reasons else 0
        beyond = self.streak - self.consecutive
        alert = beyond >= 0 and beyond % self.rewarn_every == 0
        return DriftCheck(mean_gain, relative, sum(self.history) / len(self.history), drift, self.gain_threshold,
                          self.streak, alert, reasons)

    def state_dict(self) -> Dict[str, Any]:
        return {"history": list(self.history), "early": {name: list(g) for name, g in self.early.items()},
                "stage": self.stage, "streak": self.streak}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Keep the history and the baselines; the streak starts again, so a problem that outlived
        the interruption is reported anew instead of staying silent."""
        self.history = deque((float(g) for g in state.get("history", [])), maxlen=self.window)
        self.early = {str(name): [float(g) for g in gains] for name, gains in (state.get("early") or {}).items()}
        self.stage = state.get("stage")
        self.streak = 0


def find_blocks(model: nn.Module) -> Blocks:
    """The blocks whose gain is measured: the model's ``monitored_blocks()`` (``CamoSegmenter``:
    encoder feature levels, FPN convs, experts, head refine), or for any other model its direct
    children that hold parameters."""
    if hasattr(model, "monitored_blocks"):
        return list(model.monitored_blocks())
    return [(name, child) for name, child in model.named_children() if any(True for _ in child.parameters())]


def _squared_norm(grads: Sequence[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    """Sum of squared L2 norms (float32 scalar, on the device) of the non-``None`` gradients."""
    squares = [torch.linalg.vector_norm(g, dtype=torch.float32).square() for g in grads if g is not None]
    return torch.stack(squares).sum() if squares else None


class GainProbe:
    """Full backward hooks on ``blocks`` that sum ``||grad_in||^2`` and ``||grad_out||^2`` per block
    over every backward pass while attached (all micro-batches of one accumulation window).

    A block whose input carries no gradient (frozen upstream, or the image) records nothing.
    """

    def __init__(self, blocks: Blocks):
        self.names = [name for name, _ in blocks]
        self.sums: List[Optional[torch.Tensor]] = [None] * len(blocks)  # each (2,): [in^2, out^2]
        self.handles = [module.register_full_backward_hook(partial(self._record, index))
                        for index, (_, module) in enumerate(blocks)]

    def _record(self, index: int, module: nn.Module, grad_input, grad_output) -> None:
        squared_in, squared_out = _squared_norm(grad_input), _squared_norm(grad_output)
        if squared_in is None or squared_out is None:
            return
        pair = torch.stack([squared_in, squared_out])
        self.sums[index] = pair if self.sums[index] is None else self.sums[index] + pair

    def remove(self) -> Tuple[List[str], Optional[torch.Tensor]]:
        """Remove every hook; return the measured block names and their gains ``(K,)`` (device)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        measured = [(name, pair) for name, pair in zip(self.names, self.sums) if pair is not None]
        if not measured:
            return [], None
        pairs = torch.stack([pair for _, pair in measured])  # (K, 2)
        return [name for name, _ in measured], (pairs[:, 0] / pairs[:, 1]).sqrt()


class GradientDriftMonitor(Callback):
    """Samples block gains every ``interval`` updates.

    It schedules itself: hooks are attached in ``on_optimizer_step`` of the update *before* a
    measured one (or in ``on_epoch_start`` when the measured update opens an epoch) and removed in
    the measured update's ``on_optimizer_step``, so they see every micro-batch of exactly that
    update. ``wants_measurement`` / ``attach`` / ``detach`` are public for a Trainer-driven call.
    Gains are kept on the device and read once per measurement (no per-step sync).

    Args:
        interval: optimizer steps between measurements (``--grad-monitor-interval``).
        window, gain_threshold, drift_threshold, consecutive, baseline_checks: see ``DriftDetector``.
        grad_clip: the run's ``--grad-clip``, quoted in the advice.
    """

    name = "gradient_drift"

    def __init__(self, interval: int = 50, window: int = 10, gain_threshold: Optional[float] = None,
                 drift_threshold: float = 0.5, consecutive: int = 3, grad_clip: float = 1.0, baseline_checks: int = 3):
        if interval < 1:
            raise ValueError(f"gradient monitor interval must be >= 1, got {interval}")
        self.interval, self.grad_clip = interval, grad_clip
        self.detector = DriftDetector(window, gain_threshold, drift_threshold, consecutive, baseline_checks)
        self.probe: Optional[GainProbe] = None
        self._eager = contextlib.ExitStack()  # holds the eager stance while hooks are attached

    # ------------------------------------------------------------------ hook API
    def wants_measurement(self, next_step: int) -> bool:
        """Whether global optimizer step ``next_step`` (1-based) is measured."""
        return next_step % self.interval == 0

    def attach(self, model: nn.Module) -> None:
        """Hook ``model``'s blocks (before the forward of the measured update's first micro-batch)."""
        self.detach()
        self.probe = GainProbe(find_blocks(model))
        # Compiled graphs skip module hooks added after compilation: measure this update eagerly.
        self._eager.enter_context(eager_while_measuring())

    def detach(self) -> Tuple[List[str], Optional[torch.Tensor]]:
        """Remove the hooks (idempotent); return measured block names and gains ``(K,)`` or ``None``."""
        probe, self.probe = self.probe, None
        self._eager.close()  # back to compiled graphs (no-op when not measuring)
        return probe.remove() if probe is not None else ([], None)

    # ------------------------------------------------------------------ callbacks
    def on_epoch_start(self, trainer) -> None:
        if self.wants_measurement(trainer.global_step + 1):
            self.attach(trainer.unwrapped_model)

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        names, gains = self.detach()
        if self.wants_measurement(step.step):
            self._measure(trainer, step, names, gains)
        if self.wants_measurement(step.step + 1) and step.step_in_epoch < step.steps_in_epoch:
            self.attach(trainer.unwrapped_model)

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        self.detach()  # validation runs without hooks

    def teardown(self, trainer) -> None:
        self.detach()  # also after an error: no hooks left on the model, the compile stance restored

    # ------------------------------------------------------------------ measurement
    def _measure(self, trainer, step: StepOutput, names: List[str], gains: Optional[torch.Tensor]) -> None:
        """One host copy of the gains; TensorBoard, detector and warnings."""
        values = gains.tolist() if gains is not None else []
        block_gains = {name: gain for name, gain in zip(names, values) if math.isfinite(gain) and gain > 0}
        if not block_gains:
            return
        check = self.detector.check(block_gains, getattr(trainer, "stage", 1))
        trainer.log_scalar("gradient_monitor/mean_gain", check.mean_gain, step.step)
        if check.relative_gain is None:  # baselines still being measured
            return
        trainer.log_scalar("gradient_monitor/relative_gain", check.relative_gain, step.step)
        trainer.log_scalar("gradient_monitor/relative_gain_ma", check.moving_average, step.step)
        trainer.log_scalar("gradient_monitor/relative_gain_drift", check.drift, step.step)
        # The decisions themselves, so that ``report`` draws what happened instead of re-deriving it.
        trainer.log_scalar("gradient_monitor/gain_threshold", check.threshold, step.step)
        trainer.log_scalar("gradient_monitor/flagged", float(bool(check.reasons)), step.step)
        trainer.log_scalar("gradient_monitor/alert", float(check.alert), step.step)
        if check.alert and is_main_process(trainer):
            self._warn_drift(trainer, step, check, block_gains)

    def _warn_drift(self, trainer, step: StepOutput, check: DriftCheck, block_gains: Dict[str, float]) -> None:
        rises = {name: gain / self.detector.baseline(name) for name, gain in block_gains.items()
                 if self.detector.baseline(name)}
        top = sorted(rises.items(), key=lambda item: -item[1])[:3]
        logger.warning(
            "Gradient drift at step %d (LR %.3g): %s for %d checks in a row (moving average %.2f over %d "
            "blocks; largest rises vs their early gains: %s). Actions: %s.", step.step, step.lr,
            "; ".join(check.reasons), check.streak, check.moving_average, len(rises),
            ", ".join(f"{name} x{rise:.2f}" for name, rise in top),
            lr_advice(getattr(trainer, "stage", 1), step.lr, self.grad_clip))

    def state_dict(self) -> Dict[str, Any]:
        return {"detector": self.detector.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.detector.load_state_dict(state.get("detector", {}))
