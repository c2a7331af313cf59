"""Training-health monitors, each a ``Callback`` that can be switched off on its own. They only
observe the run (acting on a finding is a callback's, see docs/ARCHITECTURE.md): they write through
the Trainer's services (``trainer.log_scalar``), into the epoch record and the log, and see the model
only through its public interface (``monitored_blocks()``, ``StepOutput.expert_fractions``).

The submodules import each other directly, never this package, so importing one of them does not
import the others.
"""
from __future__ import annotations

from engine.monitors.expert_usage import ExpertUsageMonitor
from engine.monitors.grad_norm import GradNormMonitor
from engine.monitors.gradient_drift import DriftDetector, GradientDriftMonitor
from engine.monitors.loss_ema import LossEMA, LossEMAMonitor
from engine.monitors.health_rules import analyse_history
from engine.monitors.post_epoch import PostEpochEvaluator
from engine.training.callback import is_main_process

__all__ = [
    "DriftDetector", "ExpertUsageMonitor", "GradNormMonitor", "GradientDriftMonitor", "LossEMA", "LossEMAMonitor",
    "PostEpochEvaluator", "analyse_history", "is_main_process",
]
