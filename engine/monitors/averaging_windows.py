"""Start-up facts about the run's two averages: the loss EMA and the weight EMA.

An EMA with decay ``d`` averages about the last ``1 / (1 - d)`` updates (its window) and trails the
signal by about as much; in epochs that is ``window / updates per epoch`` (the EMA guide's lag
table, here for this run's own updates per epoch). A weight-EMA window longer than the whole run
leaves the shadow close to the initial weights: its validation stays flat, which looks like a bug.
"""
from __future__ import annotations

from typing import List, Tuple

from engine.config import TrainConfig
from engine.training.stages import StagePlan

SUGGESTED_DECAYS = (0.9999, 0.9995, 0.999, 0.998, 0.995, 0.99, 0.98, 0.95, 0.9)
RUN_WINDOWS_PER_DECAY = 3  # a suggested decay fits its window at least three times into the remaining run


def window(decay: float) -> float:
    """Updates an EMA of ``decay`` averages over (``inf`` for decay 1)."""
    return float("inf") if decay >= 1.0 else round(1.0 / (1.0 - decay), 6)  # 1 / (1 - 0.9) is 10.000000000000002


def remaining_updates(plan: StagePlan, start_epoch: int) -> int:
    """Optimizer updates from the 0-based ``start_epoch`` to the end of the plan."""
    return sum(plan.steps_per_epoch(plan.stage_of(epoch)) for epoch in range(start_epoch, plan.config.epochs))


def averaging_facts(config: TrainConfig, plan: StagePlan, start_epoch: int = 0) -> Tuple[List[str], List[str]]:
    """``(facts, warnings)``: one line per enabled average, and a warning when the weight-EMA window
    exceeds the updates left in the run (unless ``--ema-warmup`` shortens the early window)."""
    facts: List[str] = []
    warnings: List[str] = []
    stages = sorted({plan.stage_of(epoch) for epoch in range(start_epoch, config.epochs)})
    per_epoch = {stage: plan.steps_per_epoch(stage) for stage in stages}

    def in_epochs(updates: float) -> str:
        return ", ".join(f"{updates / per_epoch[stage]:.3g} epochs in stage {stage} ({per_epoch[stage]} updates/epoch)"
                         for stage in stages)

    if config.loss_ema:
        facts.append(f"loss EMA: beta {config.loss_ema_beta}, window about {window(config.loss_ema_beta):.0f} "
                     f"optimizer steps = {in_epochs(window(config.loss_ema_beta))}")
    if config.use_ema:
        span = window(config.ema_decay)
        total = remaining_updates(plan, start_epoch)
        facts.append(f"weight EMA: decay {config.ema_decay}, window and lag about {span:.0f} updates = "
                     f"{in_epochs(span)}; {total} updates left in the run"
                     + (" (--ema-warmup: shorter at first)" if config.ema_warmup else ""))
        if span > total and not config.ema_warmup:
            fitting = [decay for decay in SUGGESTED_DECAYS if window(decay) * RUN_WINDOWS_PER_DECAY <= total]
            better = f" or --ema-decay {fitting[0]} (window {window(fitting[0]):.0f})" if fitting else ""
            warnings.append(f"the weight-EMA window (about {span:.0f} updates at --ema-decay {config.ema_decay}) is "
                            f"longer than the {total} updates left in this run: the EMA weights will stay close to "
                            f"the starting weights and their validation will hardly move; pass --ema-warmup{better}, "
                            "or a larger --epochs (the run's total) to train longer")
    return facts, warnings
