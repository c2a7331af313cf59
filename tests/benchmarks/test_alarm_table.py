"""The markdown table docs/BENCHMARKS.md carries for monitor_alarms.py: every planned run, one row each."""
import json
from pathlib import Path

from benchmarks.alarm_table import iou_curve, markdown_table

SUMMARY = Path(__file__).resolve().parents[2] / "benchmarks" / "histories" / "monitor_alarms" / "summary.json"


def cells(line):
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_every_run_of_the_summary_has_one_row_with_every_column():
    summary = {"runs": [
        {"run": "healthy-demo-0", "group": "healthy-demo", "held_out": True, "val_iou": [0.3, None, 0.61],
         "alarms": {}, "legacy_alarms": {"underfitting": {"warnings": 2, "first_step": 200}}},
        {"run": "lr_x30", "group": "sabotage", "held_out": False, "val_iou": [0.4, 0.0],
         "alarms": {"plateau": {"warnings": 1, "first_step": 300}, "iou_fell": {"warnings": 3, "first_step": 100}},
         "legacy_alarms": "git history absent", "visible_at_epoch": 2, "visible_at_step": 100,
         "caught_in_time": True},
        {"run": "masks_shuffled-real", "group": "sabotage", "skipped": "camo-train not found"},
    ]}
    header, rule, *rows = markdown_table(summary).splitlines()
    assert len(cells(rule)) == len(cells(header)) == 7
    assert [cells(row)[0] for row in rows] == ["healthy-demo-0", "lr_x30", "masks_shuffled-real"]
    assert all(len(cells(row)) == 7 for row in rows)
    healthy, sabotage, skipped = (cells(row) for row in rows)
    assert healthy[1:5] == ["yes", "0.30 nan 0.61", "-", "underfitting 2 (200)"]
    assert sabotage[3] == "iou_fell 3 (100), plateau 1 (300)"  # first warning first
    assert sabotage[4:] == ["git history absent", "2, 100", "yes / -"]
    assert "camo-train not found" in skipped


def test_a_long_curve_keeps_its_first_and_last_epochs():
    curve = iou_curve([index / 100 for index in range(40)])
    assert curve.startswith("0.00 0.01 0.02 0.03 0.04 ... (32 more)") and curve.endswith("0.37 0.38 0.39")
    assert iou_curve([0.5] * 12).count("0.50") == 12


def test_the_saved_summary_renders():
    summary = json.loads(SUMMARY.read_text())
    table = markdown_table(summary).splitlines()
    assert len(table) == 2 + len(summary["runs"])
