"""The per-run table of ``monitor_alarms.py``'s summary as markdown (docs/BENCHMARKS.md carries it)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

HEADER = ("| run | held out | val IoU by epoch | today's rules: warnings (first step) | replaced rules "
          "| failure shows (epoch, step) | in time: today / replaced |")


def iou_curve(values: List[Optional[float]], head: int = 5, tail: int = 3, longest: int = 12) -> str:
    """Two decimals per epoch; a curve longer than ``longest`` epochs keeps its ``head`` and ``tail``."""
    text = ["nan" if value is None else f"{value:.2f}" for value in values]
    if len(text) > longest:
        text = text[:head] + [f"... ({len(text) - head - tail} more)"] + text[-tail:]
    return " ".join(text)


def warnings_cell(alarms: Any) -> str:
    """``rule count (first step)`` for each rule that warned, first warning first; ``-`` for none."""
    if isinstance(alarms, str):  # the replaced rules could not be read (no git history)
        return alarms
    ordered = sorted(alarms.items(), key=lambda item: item[1]["first_step"])
    return ", ".join(f"{rule} {entry['warnings']} ({entry['first_step']})" for rule, entry in ordered) or "-"


def verdict_cells(row: Dict[str, Any]) -> List[str]:
    """Failure shows and in time, for a sabotaged run; dashes for a healthy one."""
    if row["group"] != "sabotage":
        return ["-", "-"]
    shown = (f"{row['visible_at_epoch']}, {row['visible_at_step']}" if row["visible_at_epoch"] is not None
             else "never")
    verdicts = {True: "yes", False: "no", None: "-"}
    legacy = row.get("legacy", {}).get("caught_in_time")
    return [shown, f"{verdicts[row['caught_in_time']]} / {verdicts[legacy]}"]


def markdown_table(summary: Dict[str, Any]) -> str:
    """One row per planned run; a run not trained (or skipped) says why."""
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for row in summary["runs"]:
        if "skipped" in row:
            lines.append(f"| {row['run']} | - | {row['skipped']} | - | - | - | - |")
            continue
        cells = [row["run"], "yes" if row["held_out"] else "-", iou_curve(row["val_iou"]),
                 warnings_cell(row["alarms"]), warnings_cell(row["legacy_alarms"]), *verdict_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
