"""The real entry point: help, parsing the documented commands, dry runs, errors, a short run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.in_process import assert_refused, run_cli
from tests.conftest import tiny_flags
from train_ultimate import build_parser

ROOT = Path(__file__).resolve().parents[2]
SEED_FLAGS = """--dataset-path --checkpoint-dir --resume-from --skip-stage1 --backbone --num-experts --batch-size
--stage2-batch-size --accumulation-steps --img-size --epochs --stage1-epochs --lr --stage2-lr --scheduler
--min-lr --warmup-epochs --progressive-unfreeze --num-workers --use-ema --ema-decay""".split()
PHASE2 = """train --dataset-path /kaggle/input/cod10k-dataset/COD10K-v3
  --checkpoint-dir /kaggle/working/checkpoints_ema
  --resume-from /kaggle/working/checkpoints/best_model.pth --skip-stage1
  --backbone edgenext_base --num-experts 7 --batch-size 8 --stage2-batch-size 1
  --accumulation-steps 4 --img-size 384 --epochs 150 --stage1-epochs 30 --lr 0.00025
  --stage2-lr 0.0002 --scheduler cosine --min-lr 0.00001 --progressive-unfreeze
  --use-ema --ema-decay 0.999 --num-workers 4""".split()
TINY_FLAGS = tiny_flags()


def run_subprocess(*args, timeout=600):
    """The real ``python train_ultimate.py *args``: also sees import-time output and C-level stderr.

    The other tests call ``run_cli`` (the same ``main`` in this process, about 10 s cheaper per call).
    """
    return subprocess.run([sys.executable, str(ROOT / "train_ultimate.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


RUNNERS = {"in-process": run_cli, "subprocess": run_subprocess}
pytestmark = pytest.mark.timeout(600)  # in-process runs lost subprocess.run's timeout: pytest-timeout instead


def test_train_help_lists_every_seed_flag():
    result = run_subprocess("train", "--help")
    assert result.returncode == 0
    for flag in SEED_FLAGS:
        assert flag in result.stdout, flag


def test_phase2_command_of_the_spec_parses():
    args = build_parser().parse_args(PHASE2)
    assert args.use_ema is True and args.ema_decay == 0.999 and args.stage2_batch_size == 1
    assert args.progressive_unfreeze is True and args.skip_stage1 is True


def test_dry_run_prints_plan_and_trains_nothing(tmp_path):
    result = run_cli("train", "--config", "configs/demo.yaml", "--checkpoint-dir", str(tmp_path / "c"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "stage 1: epochs 1-1" in result.stdout and "optimizer steps/epoch" in result.stdout
    assert "data loading: 0 DataLoader workers\n" in result.stdout  # the config's explicit 0
    assert "GPU memory estimate for a 16 GB T4" in result.stdout and "AMP fp16" in result.stdout
    assert "stage 1 (batch" in result.stdout and "stage 2 (batch" in result.stdout and "not measured" in result.stdout
    assert not (tmp_path / "c").exists()


def test_dry_run_resolves_the_default_workers_from_the_cores(tmp_path):
    from engine.training.data_module import resolve_num_workers

    result = run_cli("train", "--checkpoint-dir", str(tmp_path / "c"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "num_workers: null" in result.stdout  # the config as given: automatic
    workers = resolve_num_workers(None, warn=False)
    assert f"data loading: {workers} DataLoader workers (from the CPU cores)" in result.stdout


def test_seed_recipe_config_is_valid(tmp_path):
    result = run_cli("train", "--config", "configs/cod10k_edgenext_base.yaml", "--dataset-path", str(tmp_path / "nope"),
                     "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr or "not found" in result.stderr.lower()


# One case also through a real subprocess: only there would an import-time warning break the one line.
@pytest.mark.parametrize("flags, expected, runner", [
    (["--ema-decay", "1.0"], "--ema-decay", "in-process"),
    (["--lr", "0"], "--lr", "in-process"),
    (["--epochs", "5", "--stage1-epochs", "9"], "--stage1-epochs", "in-process"),
    (["--accumulation-steps", "0"], "--accumulation-steps", "in-process"),
    (["--scheduler", "linear"], "--scheduler", "in-process"),
    (["--ema-decay", "1.0"], "--ema-decay", "subprocess"),
])
def test_bad_flags_exit_2_with_one_line(flags, expected, runner, tmp_path):
    result = RUNNERS[runner]("train", "--checkpoint-dir", str(tmp_path), "--dry-run", *flags)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_yaml_typo_suggests_closest_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("ema-decy: 0.99\n")
    result = run_cli("train", "--config", str(config), "--dry-run")
    assert result.returncode == 2 and "ema-decay" in result.stderr and "Traceback" not in result.stderr


def test_synth_then_train_on_it_end_to_end(tmp_path):
    data = tmp_path / "synthetic"
    result = run_cli("synth", "--output", str(data), "--num-train", "12", "--num-test", "4", "--size", "64")
    assert result.returncode == 0, result.stderr
    assert len(list((data / "Train" / "Image").iterdir())) == 12
    assert len(list((data / "Test" / "GT_Object").iterdir())) == 4
    result = run_cli("train", *TINY_FLAGS, "--dataset-path", str(data), "--val-fraction", "0.25",
                     "--checkpoint-dir", str(tmp_path / "ckpt"), "--use-ema", "--cache", "disk")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and [row["stage"] for row in rows] == [1, 2]
    for key in ("lr", "train_loss", "val_loss", "val_iou", "val_dice", "val_mae", "val_iou_ema", "seconds",
                "trainable_params"):
        assert key in rows[-1], key
    assert rows[0]["trainable_params"] < rows[1]["trainable_params"]  # the encoder unfroze in stage 2
    assert (tmp_path / "ckpt" / "config.yaml").exists()
    assert len(list((tmp_path / "ckpt" / "resize-cache").glob("*.rc"))) == 9  # 12 images, 25 % held out
    assert list((tmp_path / "ckpt" / "runs").glob("events.out.tfevents.*"))
    assert "Epoch 2: Loss" in result.stderr and "EMA IoU" in result.stderr


def test_train_on_synthetic_without_dataset_path(tmp_path):
    result = run_cli("train", *TINY_FLAGS, "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ckpt"),
                     "--grad-checkpointing", "--channels-last")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "synthetic camouflage scenes" in result.stderr
    assert (tmp_path / "ckpt" / "last.pth").exists() and (tmp_path / "ckpt" / "best_model.pth").exists()


def test_loss_normalization_beta_and_early_stop_flags_in_help_and_range_checked(tmp_path):
    result = run_cli("train", "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "--loss-normalization-beta" in help_text and "1/(1-beta) micro-batches" in help_text
    assert "(one EMA update per forward pass) (default: 0.99)" in help_text
    assert "--early-stop-patience" in help_text and "(unset or 0: off)" in help_text
    folder = tmp_path / "run"
    for flags, words in ((["--loss-normalization-beta", "1"], ["--loss-normalization-beta", "[0, 1)"]),
                         (["--early-stop-patience", "-1"], ["--early-stop-patience", "0 turns it off"])):
        assert_refused(run_cli("train", "--dry-run", "--checkpoint-dir", folder, *flags), *words)
    accepted = run_cli("train", "--dry-run", "--checkpoint-dir", folder, "--loss-normalization", "ema",
                       "--loss-normalization-beta", "0.9", "--early-stop-patience", "5")
    assert accepted.returncode == 0, accepted.stderr
    assert "loss_normalization_beta: 0.9" in accepted.stdout and "early_stop_patience: 5" in accepted.stdout
