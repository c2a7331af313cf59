"""Regenerate the figures of the guides from this repo's own code (``make figures``).

LR schedules come from ``engine.training.stages``; the EMA figures from ``engine.monitors.loss_ema``; the
loss, EMA-IoU and drift figures from two short real training runs on the synthetic set (CPU, about
two minutes in all), written to a temporary folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import json  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from engine.build import build_trainer  # noqa: E402
from engine.config import SCHEDULERS, build_config  # noqa: E402
from engine.monitors.loss_ema import LossEMA  # noqa: E402
from engine.training.resume import replan  # noqa: E402
from engine.training.stages import PlanState, StagePlan  # noqa: E402

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
    axis.set(title="Reference recipe: stage 1 (30 epochs) then stage 2, 342 updates/epoch",
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


DEMO_RUN = dict(backbone="edgenext_xx_small", pretrained=False, num_experts=4, decoder_channels=32, img_size=96,
                synthetic_train_size=240, synthetic_val_size=60, batch_size=8, epochs=8, stage1_epochs=1, lr=2e-3,
                stage2_lr=2e-3, backbone_lr_scale=1.0, min_lr=1e-4, warmup_epochs=0.5, num_workers=0,
                keep_checkpoints=0, log_interval=10, use_ema=True, ema_decay=0.99)


def train(folder: Path, **overrides) -> Path:
    torch.manual_seed(0)
    build_trainer(build_config({}, dict(DEMO_RUN, checkpoint_dir=str(folder), **overrides))).fit()
    return folder


def scalars(folder: Path, tag: str):
    events = EventAccumulator(str(folder / "runs"))
    events.Reload()
    values = events.Scalars(tag) if tag in events.Tags()["scalars"] else []
    return [value.step for value in values], [value.value for value in values]


def loss_ema_figure(run: Path) -> Path:
    steps, losses = scalars(run, "train/step_loss")
    figure, axis = plt.subplots(figsize=(8, 3.6))
    axis.plot(steps, losses, color="0.75", linewidth=0.8, label="step loss")
    for beta in (0.9, 0.99, 0.999):
        ema = LossEMA(beta)
        axis.plot(steps, [float(ema.update(torch.tensor(loss))) for loss in losses], label=f"loss EMA, beta {beta}")
    axis.set(title="One synthetic-set run: step loss and its bias-corrected EMA", xlabel="optimizer step",
             ylabel="loss")
    axis.legend()
    axis.grid(alpha=0.3)
    return save(figure, "loss_ema_betas.png")


def ema_lag_figure() -> Path:
    """EMA of a signal that steps from 1 to 0 at step 200: the lag is about 1 / (1 - beta) steps."""
    signal = [1.0] * 200 + [0.0] * 800
    figure, axis = plt.subplots(figsize=(8, 3.6))
    axis.plot(signal, color="0.5", label="signal")
    for beta in (0.9, 0.99, 0.995):
        ema = LossEMA(beta)
        axis.plot([float(ema.update(torch.tensor(value))) for value in signal], label=f"beta {beta}: window {1 / (1 - beta):.0f}")
    axis.set(title="EMA lag after a step change", xlabel="step", ylabel="value")
    axis.legend()
    axis.grid(alpha=0.3)
    return save(figure, "ema_lag.png")


def base_vs_ema_figure(run: Path) -> Path:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    epochs = [row["epoch"] for row in rows]
    axis.plot(epochs, [row["val_iou"] for row in rows], marker="o", label="base weights")
    axis.plot(epochs, [row["val_iou_ema"] for row in rows], marker="o", label="EMA weights (decay 0.99)")
    axis.set(title="Validation IoU, base vs EMA (synthetic set)", xlabel="epoch", ylabel="IoU")
    axis.legend()
    axis.grid(alpha=0.3)
    return save(figure, "base_vs_ema_iou.png")


def drift_figure(run: Path) -> Path:
    """A run at a far too high LR: the relative gain the monitor judged, its bound and its alerts,
    all as the run recorded them (``gradient_monitor/*``)."""
    steps, gains = scalars(run, "gradient_monitor/relative_gain")
    _, averages = scalars(run, "gradient_monitor/relative_gain_ma")
    _, bounds = scalars(run, "gradient_monitor/gain_threshold")
    alert_steps, alert_flags = scalars(run, "gradient_monitor/alert")
    figure, axis = plt.subplots(figsize=(8, 3.6))
    axis.plot(steps, gains, marker=".", label="relative gain")
    axis.plot(steps, averages, label="moving average")
    axis.plot(steps, bounds, linestyle="--", color="tab:red", linewidth=1, label="bound (--gain-threshold)")
    alerts = [(step, gain) for step, gain, (_, flag) in zip(steps, gains, zip(alert_steps, alert_flags)) if flag > 0.5]
    if alerts:
        axis.scatter(*zip(*alerts), color="red", zorder=3, label="drift warning")
    axis.set(title="LR 0.07 (35x the demo's): relative gradient gain", xlabel="optimizer step",
             ylabel="gain / early gain")
    axis.legend()
    axis.grid(alpha=0.3)
    return save(figure, "drift_high_lr.png")


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
    ema_lag_figure()
    with tempfile.TemporaryDirectory() as scratch:
        healthy = train(Path(scratch) / "healthy")
        loss_ema_figure(healthy)
        base_vs_ema_figure(healthy)
        unstable = train(Path(scratch) / "high_lr", epochs=3, lr=0.07, stage2_lr=0.07, use_ema=False,
                         grad_monitor_interval=3)
        drift_figure(unstable)
