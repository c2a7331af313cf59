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
from typing import Any, Dict, List, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.monitors.health_rules import RULE_TESTS, EpochStats, ScheduleContext, analyse_history  # noqa: E402
from engine.monitors.lr_check import first_epoch_lr_check, tenth_of  # noqa: E402
from engine.monitors.paired_evidence import FalseAlarmBudget  # noqa: E402
from engine.monitors.post_epoch import LR_CHECK_TESTS  # noqa: E402

LEGACY_COMMIT = "248c8f8"  # the last commit with the fixed 1/5/10/30 % rules (engine/monitors/post_epoch.py)
LEGACY_RULES = (("slow improvement", "slow_loss"), ("slow IoU progress", "slow_iou"), ("severe overfitting", "gap_severe"),
                ("mild overfitting", "gap_mild"), ("no signal", "no_signal"), ("plateau", "plateau"),
                ("underfitting", "underfitting"))
TOWARD_ALARM = {"iou_fell": -1.0, "val_loss_rose": 1.0, "below_image_blind": -1.0}  # the sign of z that alarms


def judged_epochs(history: Dict[str, Any]) -> int:
    """The epochs the run's report judged (older histories kept only the budget of 3 tests per epoch)."""
    if "judged_epochs" in history:
        return history["judged_epochs"]
    return (history["budget_tests"] - LR_CHECK_TESTS) // 3


def replay(history: Dict[str, Any]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Today's health issues over a saved run, ``[{"rule", "epoch", "step", "message"}]``, and how
    close each paired test came to its critical z (``{rule: {"epoch", "z", "share_of_critical_z"}}``).

    The budget is today's: ``RULE_TESTS`` per judged epoch, plus the epoch-1 check.
    """
    budget = FalseAlarmBudget(RULE_TESTS * judged_epochs(history) + LR_CHECK_TESTS)
    alarms, closest = [], {}
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
        for evidence in health["evidence"]:  # how near each paired test came to its critical z
            toward_alarm = TOWARD_ALARM.get(evidence["rule"])
            if toward_alarm is not None and isinstance(evidence["z"], (int, float)) and math.isfinite(evidence["z"]):
                share = toward_alarm * evidence["z"] / evidence["critical_z"]
                best = closest.get(evidence["rule"])
                if best is None or share > best["share_of_critical_z"]:
                    closest[evidence["rule"]] = {"epoch": row["epoch"], "z": evidence["z"],
                                                 "share_of_critical_z": round(share, 3)}
        for rule, message in zip(health["fired"], health["issues"]):
            alarms.append({"rule": rule, "epoch": row["epoch"], "step": row["global_step"], "message": message})
    return alarms, closest


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


def visible_epoch(history: Dict[str, Any], reference: List[Tuple[int, float]]) -> Optional[Dict[str, Any]]:
    """The first epoch whose val IoU shows the failure: NaN, below half the healthy runs' mean IoU
    after as many optimizer steps, or 0.05 below the run's own best before it. None if no epoch does.

    The healthy mean is compared at the same step, not the same epoch: a run with 4 steps per epoch
    is not failing at epoch 1 because a run with 50 steps per epoch scored more there. Before the
    healthy runs' first validation there is nothing to compare with, and only the other two count.
    """
    best = -math.inf
    for row in history["epochs"]:
        iou = row["val_iou"]
        healthy = healthy_iou_at(reference, row["global_step"])
        if iou is None or not math.isfinite(iou) or iou < best - 0.05 or (healthy is not None and iou < 0.5 * healthy):
            return row
        best = max(best, iou)
    return None


def healthy_iou_at(reference: List[Tuple[int, float]], step: int) -> Optional[float]:
    """The healthy runs' mean val IoU after ``step`` optimizer steps (linear between their epochs;
    their last value after their last epoch; None before their first validation)."""
    if not reference or step < reference[0][0]:
        return None
    for (step_a, iou_a), (step_b, iou_b) in zip(reference, reference[1:]):
        if step_a <= step <= step_b:
            return iou_a + (iou_b - iou_a) * (step - step_a) / max(step_b - step_a, 1)
    return reference[-1][1]


def judge(history: Dict[str, Any], alarms: List[Dict[str, Any]], reference: List[Tuple[int, float]]) -> Dict[str, Any]:
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


def healthy_reference(histories: List[Dict[str, Any]]) -> List[Tuple[int, float]]:
    """``(global step, mean val IoU)`` at each epoch end, over healthy runs of one setting (the same
    steps per epoch, so their epochs end at the same steps)."""
    per_step: Dict[int, List[float]] = {}
    for history in histories:
        for row in history["epochs"]:
            per_step.setdefault(row["global_step"], []).append(row["val_iou"])
    return [(step, sum(values) / len(values)) for step, values in sorted(per_step.items())]
