"""Regenerate the figures of the guides from this repo's own code (``make figures``).

Today: the LR schedules of ``engine.schedule`` / ``engine.stages`` for the seed recipe on COD10K.
Everything here runs on the CPU in seconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.config import SCHEDULERS, build_config  # noqa: E402
from engine.resume import replan  # noqa: E402
from engine.stages import PlanState, StagePlan  # noqa: E402

FIGURES = ROOT / "guides" / "figures"
SEED_RECIPE = dict(backbone="edgenext_base", epochs=120, stage1_epochs=30, lr=2.5e-4, stage2_lr=2e-4,
                   min_lr=1e-5, warmup_epochs=1, batch_size=8)
TRAIN_IMAGES = 2736  # 3040 COD10K CAM images minus the 10 % validation hold-out


def lr_curve(plan: StagePlan, first_epoch: int = 0):
    steps, rates, step = [], [], 0
    for epoch in range(plan.config.epochs):
        for update in range(plan.steps_per_epoch(plan.stage_of(epoch))):
            if epoch >= first_epoch:
                steps.append(step)
                rates.append(plan.lr_at(epoch, update))
            step += 1
    return steps, rates


def schedules_figure() -> Path:
    figure, axis = plt.subplots(figsize=(8, 3.6))
    for kind in SCHEDULERS:
        config = build_config({}, dict(SEED_RECIPE, scheduler=kind))
        steps, rates = lr_curve(StagePlan(config, TRAIN_IMAGES, PlanState.fresh(config)))
        axis.plot(steps, rates, label=kind)
    axis.set(title="Seed recipe: stage 1 (30 epochs) then stage 2, 342 updates/epoch",
             xlabel="optimizer step", ylabel="decoder LR")
    axis.legend()
    axis.grid(alpha=0.3)
    return save(figure, "lr_schedules.png")


def replan_figure() -> Path:
    """The plateau recipe: resume at epoch 60 of the 120-epoch plan with 150 epochs and a new LR."""
    figure, axis = plt.subplots(figsize=(8, 3.6))
    original = build_config({}, SEED_RECIPE)
    steps, rates = lr_curve(StagePlan(original, TRAIN_IMAGES, PlanState.fresh(original)))
    axis.plot(steps, rates, label="original plan (120 epochs)", alpha=0.6)
    resumed = build_config({}, dict(SEED_RECIPE, epochs=150, stage2_lr=1e-4, skip_stage1=True))
    state = replan(PlanState.fresh(original), 60, resumed)
    steps, rates = lr_curve(StagePlan(resumed, TRAIN_IMAGES, state), first_epoch=60)
    axis.plot(steps, rates, label="resumed at epoch 60: --epochs 150 --stage2-lr 1e-4")
    axis.set(title="Re-planning on resume", xlabel="optimizer step", ylabel="decoder LR")
    axis.legend()
    axis.grid(alpha=0.3)
    return save(figure, "lr_replan.png")


def save(figure, name: str) -> Path:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / name
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


if __name__ == "__main__":
    schedules_figure()
    replan_figure()
