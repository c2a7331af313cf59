"""The resume workflow: a resume continues the run's own config, warm restarts, a true history,
and a console that suits saved logs (Kaggle)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data.cache import ResizeCache, build_cache
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from engine.config import CACHE_MODES
from tests.cli.in_process import run_cli
from tests.conftest import tiny_flags
from tests.engine.training.test_resume import StopAtStep

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_flags(log_interval=1, keep_checkpoints=3)
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """Two epochs with non-default architecture and schedule flags (what a user ran in session 1)."""
    folder = tmp_path_factory.mktemp("run") / "ckpt"
    result = run_cli("train", *TINY, "--checkpoint-dir", folder)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


def copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_resume_auto_alone_continues_the_run_with_its_own_settings(first_run, tmp_path):
    folder = copy_run(first_run, tmp_path / "ckpt")
    result = run_cli("-q", "train", "--checkpoint-dir", folder, "--resume-from", "auto", "--epochs", "3", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backbone: test_convnext" in result.stdout and "num_experts: 3" in result.stdout
    assert "changed on this invocation: epochs: 2 -> 3" in result.stdout
    result = run_cli("train", "--checkpoint-dir", folder, "--resume-from", "auto", "--epochs", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "settings taken from its config" in result.stderr
    assert progress(load_checkpoint(folder / "last.pth"))["epoch"] == 3


def test_architecture_conflicts_are_listed_in_one_line(first_run, tmp_path):
    folder = copy_run(first_run, tmp_path / "ckpt")
    before = (folder / "last.pth").read_bytes()
    result = run_cli("train", "--checkpoint-dir", folder, "--resume-from", "auto", "--backbone", "test_resnet",
                     "--num-experts", "5")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert "--backbone test_resnet (checkpoint: test_convnext)" in error and "--num-experts 5 (checkpoint: 3)" in error
    assert (folder / "last.pth").read_bytes() == before


def test_restart_schedule_warm_restarts_with_unchanged_flags(first_run, tmp_path):
    folder = copy_run(first_run, tmp_path / "ckpt")
    epoch_1 = folder / "epoch_1.pth"  # (last.pth completed the 2 epochs: nothing would be left to train)
    result = run_cli("train", "--checkpoint-dir", folder, "--resume-from", epoch_1, "--epochs", "2",
                     "--restart-schedule", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--restart-schedule" in result.stdout and "re-planned from epoch 2" in result.stdout
    same = run_cli("train", "--checkpoint-dir", folder, "--resume-from", epoch_1, "--epochs", "2", "--dry-run")
    assert "continuing its plan" in same.stdout


def test_resume_from_an_older_epoch_rewrites_the_history_after_it(first_run, tmp_path):
    folder = copy_run(first_run, tmp_path / "ckpt")
    result = run_cli("train", "--checkpoint-dir", folder, "--resume-from", folder / "epoch_1.pth")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # epoch 2 replayed once, not appended twice
    assert rows[1]["resumed_after_epoch"] == 1 and "resumed_after_epoch" not in rows[0]  # report marks it
    assert "dropped 1 row(s) of epochs after 1" in result.stderr


def test_tensorboard_has_every_step_once_after_a_mid_epoch_resume(tiny_config, tmp_path):
    from engine.build import build_trainer

    settings = dict(epochs=3, batch_size=2, log_interval=1)  # 6 steps per epoch
    first = build_trainer(tiny_config(**settings))
    first.add_callback(StopAtStep(8))  # epoch 2, step 2 of 6
    first.fit()
    resumed = build_trainer(tiny_config(resume_from="auto", **settings))
    resumed.fit()
    events = EventAccumulator(str(tmp_path / "ckpt" / "runs"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/step_loss")]
    assert steps == list(range(1, resumed.global_step + 1))
    val_steps = [event.step for event in events.Scalars("val/iou")]
    assert val_steps == sorted(set(val_steps)) and len(val_steps) == 3


def test_plateau_lr_scale_is_in_the_plan_and_shown_by_dry_run(first_run, tmp_path):
    folder = copy_run(first_run, tmp_path / "ckpt")
    epoch_1 = folder / "epoch_1.pth"  # (last.pth completed the 2 epochs: nothing would be left to train)
    payload = torch.load(epoch_1, weights_only=True)
    payload["trainer"]["plan"]["lr_scales"] = {"2": 0.5}  # as --auto-adjust-lr leaves it after a plateau
    torch.save(payload, epoch_1)
    result = run_cli("train", "--checkpoint-dir", folder, "--resume-from", epoch_1, "--epochs", "2",
                     "--eval-epochs", "none", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "plateau LR scale x0.5" in result.stdout  # kept although the diagnosis is now off


def test_quiet_after_the_command_and_choices_at_parse_time(first_run, tmp_path):
    result = run_cli("synth", "--output", tmp_path / "set", "--num-train", "2", "--num-test", "1", "-q")
    assert result.returncode == 0 and result.stderr == ""
    for flag, value in (("--cache", "ram"), ("--amp", "fp8"), ("--scheduler", "step"), ("--progress", "fancy")):
        bad = run_cli("train", flag, value)
        assert bad.returncode == 2 and "invalid choice" in bad.stderr, flag


def test_help_prints_each_default_once_and_imports_no_torch():
    code = ("import sys, contextlib, io, train_ultimate\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        train_ultimate.main(['train', '--help'])\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)\nprint(out.getvalue())")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    loaded_torch, text = result.stdout.split("\n", 1)
    assert loaded_torch == "False", "train --help must not import torch (it would take seconds)"
    assert "(default: None)" not in text
    flat = " ".join(text.split())
    assert flat.count("default:") == flat.count("(default:")  # every default in one parenthesis
    assert "resize-cache) (default" not in flat


def test_progress_off_prints_epoch_summaries_only(tmp_path):
    result = run_cli("train", *TINY, "--epochs", "1", "--checkpoint-dir", tmp_path / "ckpt", "--progress", "off")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Epoch 1:" in result.stderr and "| Step " not in result.stderr and "it/s" not in result.stderr
    logged = run_cli("train", *TINY, "--epochs", "1", "--checkpoint-dir", tmp_path / "log", "--progress", "log")
    assert "| Step 1/" in logged.stderr and "it/s" not in logged.stderr  # captured stderr is not a terminal


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_every_cache_mode_the_config_offers_is_built_by_the_data_code(mode, tmp_path):
    assert isinstance(build_cache(mode, 96, tmp_path), ResizeCache)
