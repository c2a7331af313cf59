"""Training-health monitors (SPEC section 8), each a ``Callback`` that can be switched off on its own.

Shared helpers live here; they are defined before the re-exports below so the submodules can
import them while this package is still initialising.
"""
from __future__ import annotations

from typing import Optional

from engine.callbacks import StepOutput


def summary_writer(trainer) -> Optional[object]:
    """The ``SummaryWriter`` owned by the ``logging`` callback, or ``None`` (no logging callback yet)."""
    callbacks = getattr(trainer, "callbacks", None)
    logging_callback = callbacks.get("logging") if callbacks is not None else None
    return getattr(logging_callback, "writer", None)


def is_log_step(step: StepOutput, log_interval: int) -> bool:
    """The steps at which ``LoggingCallback`` copies its buffer to the host (same rule, same syncs)."""
    return step.step_in_epoch == 1 or step.step % log_interval == 0 or step.step_in_epoch == step.steps_in_epoch


def is_main_process(trainer) -> bool:
    """Rank 0 (or a single process): the one that prints warnings and reports."""
    return bool(getattr(getattr(trainer, "data", None), "is_main_process", True))


from engine.monitors.expert_usage import ExpertUsageMonitor  # noqa: E402
from engine.monitors.gradient_drift import DriftDetector, GradientDriftMonitor  # noqa: E402
from engine.monitors.loss_ema import LossEMA, LossEMAMonitor  # noqa: E402
from engine.monitors.post_epoch import PostEpochEvaluator, analyse_history  # noqa: E402

__all__ = [
    "DriftDetector", "ExpertUsageMonitor", "GradientDriftMonitor", "LossEMA", "LossEMAMonitor",
    "PostEpochEvaluator", "analyse_history", "is_log_step", "summary_writer",
]
