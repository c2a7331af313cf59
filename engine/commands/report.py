"""Run report: PNG figures (matplotlib, Agg) from ``metrics.jsonl`` and the TensorBoard scalars of a
checkpoint folder, written to ``<checkpoint-dir>/report/``. A figure whose data is missing is
skipped with a logged note; the others are still drawn.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from engine.config import ConfigError

logger = logging.getLogger(__name__)

Series = Tuple[np.ndarray, np.ndarray]  # (steps, values)
EXPERT_TAG = re.compile(r"^moe/expert_(\d+)$")


def read_scalars(runs_dir: Path) -> Dict[str, Series]:
    """Every scalar series under a TensorBoard log folder (all event files of all sessions)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir() or not any(runs_dir.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every event file it reads at INFO
    accumulator = EventAccumulator(str(runs_dir), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    series = {}
    for tag in accumulator.Tags().get("scalars", []):
        events = accumulator.Scalars(tag)
        series[tag] = (np.array([event.step for event in events]), np.array([event.value for event in events]))
    return series


def read_metrics(path: Path) -> List[dict]:
    """The epoch records of ``metrics.jsonl`` (lines that are not JSON objects are skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.info("Report: %s line %d is not JSON (an interrupted write?); skipped", path, number)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _axes(title: str, xlabel: str, ylabel: str, size=(7.0, 3.6)):
    figure = Figure(figsize=size)
    axes = figure.add_subplot(1, 1, 1)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def plot_loss(scalars: Dict[str, Series], folder: Path) -> Optional[Path]:
    """Raw step loss with the bias-corrected loss EMA on top."""
    if "train/step_loss" not in scalars:
        return None
    figure, axes = _axes("Training loss", "optimizer step", "loss")
    axes.plot(*scalars["train/step_loss"], color="tab:blue", alpha=0.35, linewidth=0.8, label="step loss")
    if "train/loss_ema" in scalars:
        axes.plot(*scalars["train/loss_ema"], color="tab:blue", linewidth=1.8, label="loss EMA")
    axes.legend()
    return _save(figure, folder / "loss.png")


def epoch_marks(rows: List[dict]) -> Dict[str, Any]:
    """What the validation figure marks: the first epoch of each later stage, the epochs after which
    a resume continued, and the best epoch by the checkpoint callback's own rule (``epoch_best``)."""
    from engine.callbacks.save_checkpoints import epoch_best

    stage_starts = [(b["epoch"], b["stage"]) for a, b in zip(rows, rows[1:])
                    if "stage" in a and "stage" in b and b["stage"] != a["stage"]]
    resumes = [row["resumed_after_epoch"] for row in rows if isinstance(row.get("resumed_after_epoch"), int)]
    scored = [(epoch_best(row, row.get("best_metric", "iou"))[0], -row["epoch"]) for row in rows
              if _finite(row.get(f"val_{row.get('best_metric', 'iou')}"))]
    best = -max(scored)[1] if scored else None  # ties: the earlier epoch, which best_model.pth keeps
    return {"stage_starts": stage_starts, "resumes": resumes, "best_epoch": best}


def plot_val_iou(records: List[dict], folder: Path) -> Optional[Path]:
    """Validation IoU per epoch, base weights and (when kept) weight EMA, with stage starts,
    resumes and the best epoch marked; integer epoch ticks."""
    rows = [record for record in records if _finite(record.get("val_iou")) and "epoch" in record]
    if not rows:
        return None
    figure, axes = _axes("Validation IoU", "epoch", "mean IoU per image")
    axes.plot([r["epoch"] for r in rows], [r["val_iou"] for r in rows], marker="o", markersize=3, label="base")
    ema = [(r["epoch"], r["val_iou_ema"]) for r in rows if _finite(r.get("val_iou_ema"))]
    if ema:
        axes.plot(*zip(*ema), marker="o", markersize=3, label="weight EMA")
    marks = epoch_marks(rows)
    for epoch, stage in marks["stage_starts"]:
        axes.axvline(epoch - 0.5, color="gray", linestyle="--", linewidth=1, label=f"stage {stage} starts")
    for index, epoch in enumerate(marks["resumes"]):
        axes.axvline(epoch + 0.5, color="tab:olive", linestyle=":", linewidth=1.2,
                     label="resumed" if index == 0 else None)
    best = next(row for row in rows if row["epoch"] == marks["best_epoch"])
    axes.scatter([best["epoch"]], [max(best["val_iou"], best.get("val_iou_ema") or best["val_iou"])], marker="*",
                 s=140, color="tab:red", zorder=4, label=f"best (epoch {best['epoch']})")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize=8)
    return _save(figure, folder / "val_iou.png")


def plot_lr(scalars: Dict[str, Series], folder: Path) -> Optional[Path]:
    """Decoder learning rate per optimizer step."""
    if "train/lr" not in scalars:
        return None
    figure, axes = _axes("Learning rate (decoder)", "optimizer step", "LR")
    axes.plot(*scalars["train/lr"], color="tab:green")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _save(figure, folder / "lr.png")


def gain_series(scalars: Dict[str, Series]) -> Tuple[str, str]:
    """``(series tag, moving-average tag)`` the drift monitor judged: the relative gain (runs from this
    version on; it starts after the baseline checks) or, for older runs, the raw mean gain."""
    if "gradient_monitor/relative_gain" in scalars:
        return "gradient_monitor/relative_gain", "gradient_monitor/relative_gain_ma"
    return "gradient_monitor/mean_gain", "gradient_monitor/mean_gain_ma"


def recorded_checks(scalars: Dict[str, Series]) -> Tuple[np.ndarray, np.ndarray]:
    """Per drift check (aligned with the judged gain series): flagged, and alert raised.

    The monitor records both decisions itself (``gradient_monitor/flagged`` / ``alert``), so the
    report shows what happened in the run instead of re-deriving it; runs from before these tags
    get no markers.
    """
    steps = scalars[gain_series(scalars)[0]][0]

    def aligned(tag: str) -> np.ndarray:
        if tag not in scalars:
            return np.zeros(len(steps), dtype=bool)
        recorded = dict(zip(*scalars[tag]))
        return np.array([recorded.get(step, 0.0) > 0.5 for step in steps], dtype=bool)

    return aligned("gradient_monitor/flagged"), aligned("gradient_monitor/alert")


def plot_gradient_gain(scalars: Dict[str, Series], folder: Path) -> Optional[Path]:
    """The gain the drift monitor judged, its moving average, the threshold it used and its alerts."""
    series, average = gain_series(scalars)
    if series not in scalars:
        return None
    gains = scalars[series]
    relative = series.endswith("relative_gain")
    figure, axes = _axes("Gradient flow: " + ("relative block gain" if relative else "mean block gain"),
                         "optimizer step", "gain / early gain (geometric mean)" if relative else
                         "||grad in|| / ||grad out||")
    axes.plot(*gains, color="tab:purple", alpha=0.6, marker=".", label="relative gain" if relative else "mean gain")
    if average in scalars:
        axes.plot(*scalars[average], color="tab:purple", linewidth=1.8, label="moving average")
    if "gradient_monitor/gain_threshold" in scalars:
        axes.step(*scalars["gradient_monitor/gain_threshold"], where="post", color="tab:red", linestyle="--",
                  linewidth=1, label="threshold")
    flagged, alerts = recorded_checks(scalars)
    if flagged.any():
        axes.scatter(gains[0][flagged], gains[1][flagged], color="tab:orange", s=18, zorder=3, label="flagged check")
    if alerts.any():
        axes.scatter(gains[0][alerts], gains[1][alerts], color="tab:red", marker="^", s=70, zorder=4,
                     label="drift warning")
    axes.legend(fontsize=8)
    return _save(figure, folder / "gradient_gain.png")


def plot_expert_usage(scalars: Dict[str, Series], records: List[dict], folder: Path) -> Optional[Path]:
    """Routing share of each expert (TensorBoard ``moe/expert_<i>``; else per epoch from metrics.jsonl)."""
    tags = sorted((int(match.group(1)), tag) for tag in scalars if (match := EXPERT_TAG.match(tag)))
    if tags:
        figure, axes = _axes("Expert usage (routing share)", "optimizer step", "share")
        for index, tag in tags:
            axes.plot(*scalars[tag], label=f"expert {index}")
    else:
        rows = [(r["epoch"], r["expert_usage"]) for r in records if isinstance(r.get("expert_usage"), list)
                and r["expert_usage"] and "epoch" in r]
        if not rows:
            return None
        rows = [row for row in rows if len(row[1]) == len(rows[-1][1])]  # a resume may change the expert count
        figure, axes = _axes("Expert usage (routing share, epoch mean)", "epoch", "share")
        shares = np.array([row[1] for row in rows], dtype=float)
        for index in range(shares.shape[1]):
            axes.plot([row[0] for row in rows], shares[:, index], marker="o", markersize=3, label=f"expert {index}")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8, ncol=2)
    return _save(figure, folder / "expert_usage.png")


def build_report(checkpoint_dir: Path) -> List[Path]:
    """Draw every figure whose data exists into ``checkpoint_dir/report``, from what the run
    recorded (``metrics.jsonl``, ``runs/``); nothing is recomputed or rebuilt.

    Args:
        checkpoint_dir: a run's ``--checkpoint-dir``.

    Returns:
        The PNG files written, in drawing order.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise ConfigError(f"--checkpoint-dir {checkpoint_dir} is not a folder; pass the folder of a training run")
    scalars = read_scalars(checkpoint_dir / "runs")
    records = read_metrics(checkpoint_dir / "metrics.jsonl")
    if not scalars:
        logger.info("Report: no TensorBoard scalars in %s", checkpoint_dir / "runs")
    if not records:
        logger.info("Report: no epoch records in %s", checkpoint_dir / "metrics.jsonl")
    folder = checkpoint_dir / "report"
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create {folder} ({error.strerror}); "
                          "copy the run folder somewhere writable") from None
    figures = [
        ("loss.png", "train/step_loss (TensorBoard)", lambda: plot_loss(scalars, folder)),
        ("val_iou.png", "val_iou (metrics.jsonl)", lambda: plot_val_iou(records, folder)),
        ("lr.png", "train/lr (TensorBoard)", lambda: plot_lr(scalars, folder)),
        ("gradient_gain.png", "gradient_monitor/mean_gain (TensorBoard; drift monitor off or no check yet?)",
         lambda: plot_gradient_gain(scalars, folder)),
        ("expert_usage.png", "moe/expert_<i> (TensorBoard) or expert_usage (metrics.jsonl)",
         lambda: plot_expert_usage(scalars, records, folder)),
    ]
    written = []
    for name, source, draw in figures:
        path = draw()
        if path is None:
            logger.info("Report: skipped %s: no %s", name, source)
        else:
            written.append(path)
    logger.info("Report: wrote %d figure(s) to %s", len(written), folder)
    return written


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def report_after_training(trainer) -> List[Path]:
    """The end-of-``train`` report (rank 0 only); a failure is a warning, never a failed run."""
    if not getattr(trainer.data, "is_main_process", True):
        return []
    folder = Path(trainer.config.checkpoint_dir)
    try:
        return build_report(folder)
    except Exception as error:  # noqa: BLE001 - the checkpoints are already safe on disk
        logger.warning("Run report failed (%s: %s); training results are unaffected. Retry with: "
                       "python train_ultimate.py report --checkpoint-dir %s", type(error).__name__, error, folder)
        return []
