"""Training-health monitors, each a ``Callback`` that can be switched off on its own. They write
through the Trainer's services (``trainer.log_scalar``) and see the model only through its public
interface (``monitored_blocks()``, ``StepOutput.expert_fractions``).

Shared helpers live here; they are defined before the re-exports below so the submodules can
import them while this package is still initialising.
"""
from __future__ import annotations


def is_main_process(trainer) -> bool:
    """Rank 0 (or a single process): the one that prints warnings and reports."""
    return bool(getattr(getattr(trainer, "data", None), "is_main_process", True))


from engine.monitors.expert_usage import ExpertUsageMonitor  # noqa: E402
from engine.monitors.gradient_drift import DriftDetector, GradientDriftMonitor  # noqa: E402
from engine.monitors.loss_ema import LossEMA, LossEMAMonitor  # noqa: E402
from engine.monitors.post_epoch import PostEpochEvaluator, analyse_history  # noqa: E402

__all__ = [
    "DriftDetector", "ExpertUsageMonitor", "GradientDriftMonitor", "LossEMA", "LossEMAMonitor",
    "PostEpochEvaluator", "analyse_history", "is_main_process",
]
