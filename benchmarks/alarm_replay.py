"""Re-judge saved run histories with the health rules, offline (no training).

``benchmarks/monitor_alarms.py`` saves one JSON history per run: each epoch's means, schedule
context and per-image validation scores, epoch 1's step losses, and the warnings the live-only
monitors (drift, grad norm, non-finite guard, expert usage) raised with their step. This module
replays the health report over those histories: today's rules (``engine/monitors``) and, for the
comparison, the fixed-percentage rules they replaced (read from git at ``LEGACY_COMMIT``).
"""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.monitors.health_rules import EpochStats, ScheduleContext, analyse_history  # noqa: E402
from engine.monitors.lr_check import first_epoch_lr_check, tenth_of  # noqa: E402
from engine.monitors.paired_evidence import FalseAlarmBudget  # noqa: E402

LEGACY_COMMIT = "248c8f8"  # the last commit with the fixed 1/5/10/30 % rules (engine/monitors/post_epoch.py)
LEGACY_RULES = (("slow improvement", "slow_loss"), ("slow IoU progress", "slow_iou"), ("severe overfitting", "gap_severe"),
                ("mild overfitting", "gap_mild"), ("no signal", "no_signal"), ("plateau", "plateau"),
                ("underfitting", "underfitting"))


def replay(history: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Today's health issues over a saved run: ``[{"rule", "epoch", "step", "message"}]``."""
    budget = FalseAlarmBudget(history["budget_tests"])
    alarms = []
    losses = torch.tensor(history["epoch1_step_losses"], dtype=torch.float64)
    tenth = tenth_of(len(losses))
    epochs = history["epochs"]
    if tenth and epochs:
        check = first_epoch_lr_check(losses[:tenth], losses[-tenth:], budget.z, epochs[0]["context"]["epoch1_all_warmup"])
        if check["verdict"] in ("too_low", "too_high"):
            alarms.append({"rule": f"lr_{check['verdict']}", "epoch": 1, "step": epochs[0]["global_step"],
                           "message": check["message"]})
    stats: List[EpochStats] = []
    scores: Dict[int, torch.Tensor] = {}
    for row in epochs:
        stats.append(epoch_stats(row))
        if row.get("per_image"):
            scores[row["epoch"]] = torch.tensor(row["per_image"], dtype=torch.float32)
        if len(stats) < 2:
            continue
        health = analyse_history(stats, scores, ScheduleContext(**row["context"]), budget)
        history.setdefault("closest", {})
        for evidence in health["evidence"]:  # how near each paired test came to its critical z
            toward_alarm = {"iou_fell": -1.0, "val_loss_rose": 1.0}.get(evidence["rule"])
            if toward_alarm is not None and isinstance(evidence["z"], (int, float)) and math.isfinite(evidence["z"]):
                share = toward_alarm * evidence["z"] / evidence["critical_z"]
                best = history["closest"].get(evidence["rule"])
                if best is None or share > best["share_of_critical_z"]:
                    history["closest"][evidence["rule"]] = {"epoch": row["epoch"], "z": evidence["z"],
                                                            "share_of_critical_z": round(share, 3)}
        for rule, message in zip(health["fired"], health["issues"]):
            alarms.append({"rule": rule, "epoch": row["epoch"], "step": row["global_step"], "message": message})
    return alarms


def epoch_stats(row: Dict[str, Any]) -> EpochStats:
    return EpochStats(row["epoch"], row["val_loss"], row["train_loss"], row["val_iou"], row["image_blind_iou"],
                      row.get("val_iou_ema"))


def load_legacy_rules():
    """The module of ``LEGACY_COMMIT``'s post-epoch rules, or None outside a git checkout that has it."""
    try:
        source = subprocess.run(["git", "show", f"{LEGACY_COMMIT}:engine/monitors/post_epoch.py"], cwd=REPO,
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "legacy_post_epoch.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("legacy_post_epoch", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def replay_legacy(legacy, history: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The replaced rules' issues over a saved run (same shape as ``replay``)."""
    alarms = []
    losses = history["epoch1_step_losses"]
    epochs = history["epochs"]
    if len(losses) >= 4 and epochs:
        tenth = max(1, len(losses) // 10)
        start, end = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
        check = legacy.first_epoch_lr_check(start, end, max(losses), epochs[0]["context"]["epoch1_all_warmup"])
        if check["verdict"] in ("too_low", "too_high"):
            alarms.append({"rule": f"lr_{check['verdict']}", "epoch": 1, "step": epochs[0]["global_step"],
                           "message": check["message"]})
    stats = []
    for row in epochs:
        stats.append(legacy.EpochStats(row["epoch"], row["val_loss"], row["train_loss"], row["val_iou"],
                                       row["image_blind_iou"]))
        if len(stats) < 2:
            continue
        health = legacy.analyse_history(stats, 3, 0.01, legacy.ScheduleContext(**row["context"]))
        for issue in health["issues"]:
            rule = next((name for prefix, name in LEGACY_RULES if issue.startswith(prefix)), "other")
            alarms.append({"rule": rule, "epoch": row["epoch"], "step": row["global_step"], "message": issue})
    return alarms


def visible_epoch(history: Dict[str, Any], reference: Dict[int, float]) -> Optional[Dict[str, Any]]:
    """The first epoch whose val IoU shows the failure: NaN, below half the healthy runs' mean IoU
    at that epoch, or 0.05 below the run's own best before it. None if no epoch does."""
    best = -math.inf
    for row in history["epochs"]:
        iou = row["val_iou"]
        if iou is None or not math.isfinite(iou) or iou < 0.5 * reference.get(row["epoch"], 0.0) or iou < best - 0.05:
            return row
        best = max(best, iou)
    return None


def judge(history: Dict[str, Any], alarms: List[Dict[str, Any]], reference: Dict[int, float]) -> Dict[str, Any]:
    """When a sabotaged run's failure shows, and whether an alarm came no later than one epoch after it."""
    shown = visible_epoch(history, reference)
    first = min((alarm["step"] for alarm in alarms), default=None)
    verdict = {"visible_at_epoch": shown["epoch"] if shown else None,
               "visible_at_step": shown["global_step"] if shown else None,
               "first_alarm_step": first,
               "first_alarm": min(alarms, key=lambda alarm: alarm["step"])["rule"] if alarms else None}
    if first is None:
        verdict["caught_in_time"] = False
    elif shown is None:
        verdict["caught_in_time"] = True  # flagged before it ever shows in val IoU
    else:
        steps = [row["global_step"] for row in history["epochs"]]
        index = steps.index(shown["global_step"])
        one_epoch_later = steps[index + 1] if index + 1 < len(steps) else steps[index]
        verdict["caught_in_time"] = first <= one_epoch_later
    return verdict


def healthy_reference(histories: List[Dict[str, Any]]) -> Dict[int, float]:
    """Mean val IoU per epoch over the healthy synthetic runs."""
    per_epoch: Dict[int, List[float]] = {}
    for history in histories:
        for row in history["epochs"]:
            per_epoch.setdefault(row["epoch"], []).append(row["val_iou"])
    return {epoch: sum(values) / len(values) for epoch, values in per_epoch.items()}
