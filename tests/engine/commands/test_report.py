"""Run report: figures from metrics.jsonl + TensorBoard scalars; missing data is skipped and said."""
import json
import logging

import pytest

from engine.commands.report import build_report, read_scalars, recorded_checks
from engine.config import ConfigError

ALL_FIGURES = ["loss.png", "val_iou.png", "lr.png", "gradient_gain.png", "expert_usage.png"]
GAINS = [1.0, 1.05, 1.2, 1.25, 1.35, 1.4, 1.0, 1.0]
FLAGGED = [False, False, True, True, True, True, False, False]
ALERTS = [False, False, False, False, True, False, False, False]


def write_records(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.fixture
def finished_run(tmp_path):
    """A run folder as train leaves it: runs/ scalars (the drift monitor's decisions included), metrics.jsonl."""
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "run"
    writer = SummaryWriter(str(folder / "runs"))
    for step in range(1, 21):
        writer.add_scalar("train/step_loss", 1.0 / step + 0.05 * (step % 3), step)
        writer.add_scalar("train/loss_ema", 1.0 / step, step)
        writer.add_scalar("train/lr", 1e-3 * step / 20, step)
        for expert in range(3):
            writer.add_scalar(f"moe/expert_{expert}", (expert + 1) / 6, step)
    for check, (gain, flagged, alert) in enumerate(zip(GAINS, FLAGGED, ALERTS), 1):
        writer.add_scalar("gradient_monitor/mean_gain", 5 * gain, check * 2)  # raw gains: any scale
        writer.add_scalar("gradient_monitor/relative_gain", gain, check * 2)  # what the monitor judged
        writer.add_scalar("gradient_monitor/relative_gain_drift", gain / GAINS[0] - 1, check * 2)
        writer.add_scalar("gradient_monitor/gain_threshold", 1.3, check * 2)
        writer.add_scalar("gradient_monitor/flagged", float(flagged), check * 2)
        writer.add_scalar("gradient_monitor/alert", float(alert), check * 2)
    writer.close()
    write_records(folder, [{"epoch": epoch, "val_iou": 0.1 * epoch, "val_iou_ema": 0.1 * epoch + 0.02}
                           for epoch in (1, 2, 3)])
    return folder


def test_finished_run_gets_every_figure(finished_run):
    written = build_report(finished_run)
    assert [path.name for path in written] == ALL_FIGURES
    for path in written:
        assert path.parent == finished_run / "report"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_alert_markers_are_the_decisions_the_run_recorded(finished_run):
    flagged, alerts = recorded_checks(read_scalars(finished_run / "runs"))
    assert flagged.tolist() == FLAGGED and alerts.tolist() == ALERTS


def test_a_run_without_recorded_decisions_gets_no_markers(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "runs"))
    for check, gain in enumerate(GAINS, 1):
        writer.add_scalar("gradient_monitor/mean_gain", gain, check)
    writer.close()
    flagged, alerts = recorded_checks(read_scalars(tmp_path / "runs"))
    assert not flagged.any() and not alerts.any()
    assert [path.name for path in build_report(tmp_path)] == ["gradient_gain.png"]


def test_missing_data_is_skipped_with_a_note(tmp_path, caplog):
    folder = tmp_path / "run"
    write_records(folder, [{"epoch": 1, "val_iou": 0.3, "val_iou_ema": None}, {"epoch": 2, "val_iou": 0.4}])
    with caplog.at_level(logging.INFO, logger="engine.commands.report"):
        written = build_report(folder)
    assert [path.name for path in written] == ["val_iou.png"]
    for name in ("loss.png", "lr.png", "gradient_gain.png", "expert_usage.png"):
        assert f"skipped {name}" in caplog.text
    assert "no TensorBoard scalars" in caplog.text


def test_expert_usage_falls_back_to_epoch_records(tmp_path):
    folder = tmp_path / "run"
    write_records(folder, [{"epoch": 1, "val_iou": 0.2, "expert_usage": [0.5, 0.3, 0.2]},
                           {"epoch": 2, "val_iou": 0.3, "expert_usage": [0.4, 0.35, 0.25]}, "not a record"])
    assert [path.name for path in build_report(folder)] == ["val_iou.png", "expert_usage.png"]


def test_empty_and_missing_folders(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="engine.commands.report"):
        assert build_report(tmp_path) == []
    assert "wrote 0 figure(s)" in caplog.text
    with pytest.raises(ConfigError, match="not a folder"):
        build_report(tmp_path / "missing")


def test_validation_figure_marks_stages_resumes_and_the_checkpoints_best(tmp_path):
    from engine.commands.report import epoch_marks

    rows = [{"epoch": 1, "stage": 1, "val_iou": 0.2}, {"epoch": 2, "stage": 1, "val_iou": 0.3},
            {"epoch": 3, "stage": 2, "val_iou": 0.35, "val_iou_ema": 0.5},
            {"epoch": 4, "stage": 2, "val_iou": 0.45, "resumed_after_epoch": 3}, {"epoch": 5, "stage": 2, "val_iou": 0.4}]
    marks = epoch_marks(rows)
    assert marks == {"stage_starts": [(3, 2)], "resumes": [3], "best_epoch": 3}  # epoch 3 wins by its EMA IoU
    write_records(tmp_path, rows)
    assert [path.name for path in build_report(tmp_path)] == ["val_iou.png"]
