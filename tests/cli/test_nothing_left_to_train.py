"""A resume with no epoch left (phase 2 or a plateau run resuming a ``best_model.pth`` saved at its
run's last epoch) is refused in one line naming the ``--epochs`` that trains more, by ``train`` and
by ``--dry-run``, before anything is written. It once printed a plan "epochs 3-2", reported "Done"
and wrote no ``best_model.pth``, so the README's next command failed."""
import shutil

import pytest

from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from tests.cli.in_process import assert_refused, run_cli, snapshot

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("dry_run", [["--dry-run"], []], ids=["dry-run", "train"])
def test_phase_2_from_a_best_model_of_the_last_epoch_is_refused_naming_epochs(dry_run, tiny_run_dir, tmp_path):
    best = tiny_run_dir / "best_model.pth"
    assert progress(load_checkpoint(best))["epoch"] == 2  # the tiny run's best is its last epoch (of 2)
    before = snapshot(tiny_run_dir)
    phase_2 = tmp_path / "checkpoints_ema"
    result = run_cli("train", "--checkpoint-dir", phase_2, "--resume-from", best, "--use-ema", "--ema-decay", "0.9",
                     *dry_run)
    assert_refused(result, f"{best} is from epoch 2 of 2", "train nothing", "pass --epochs 3 to train 1 more")
    assert not phase_2.exists() and snapshot(tiny_run_dir) == before  # nothing written, anywhere
    assert "Done" not in result.stderr


def test_epochs_below_the_checkpoint_are_refused_and_the_named_epochs_train(tiny_run_dir, tmp_path):
    best = tiny_run_dir / "best_model.pth"
    phase_2 = tmp_path / "checkpoints_ema"
    below = run_cli("train", "--checkpoint-dir", phase_2, "--resume-from", best, "--epochs", "1", "--dry-run")
    assert_refused(below, "is from epoch 2, past --epochs 1", "pass --epochs 3 to train 1 more")
    # Following the refusal: the plan shows the epoch it trains (never an empty "epochs 3-2"), and the run
    # trains it and writes the best_model.pth the README's next command reads.
    planned = run_cli("train", "--checkpoint-dir", phase_2, "--resume-from", best, "--use-ema", "--epochs", "3",
                      "--ema-decay", "0.999", "--dry-run")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "stage 2: epochs 3-3" in planned.stdout and "epochs 3-2" not in planned.stdout
    # 3 updates left for a 1000-update EMA window: the warning names a larger --epochs beside --ema-warmup
    [warning] = [line for line in planned.stdout.splitlines() if line.startswith("warning: the weight-EMA window")]
    assert "3 updates left" in warning and "--ema-warmup" in warning and "or a larger --epochs" in warning
    trained = run_cli("train", "--checkpoint-dir", phase_2, "--resume-from", best, "--use-ema", "--epochs", "3")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert progress(load_checkpoint(phase_2 / "best_model.pth"))["epoch"] == 3


def test_a_complete_run_is_not_resumed_again_in_its_folder_or_a_new_session(tiny_run_dir, tmp_path):
    folder = shutil.copytree(tiny_run_dir, tmp_path / "ckpt")
    before = snapshot(folder)
    again = run_cli("train", "--checkpoint-dir", folder, "--resume-from", "auto")
    assert_refused(again, "last.pth is from epoch 2 of 2", "pass --epochs 3")
    later = tmp_path / "next_session"
    continued = run_cli("train", "--continue-from", folder, "--checkpoint-dir", later, "--dry-run")
    assert_refused(continued, "is from epoch 2 of 2", "pass --epochs 3")
    continued = run_cli("train", "--continue-from", folder, "--checkpoint-dir", later)
    assert_refused(continued, "is from epoch 2 of 2", "pass --epochs 3")
    assert snapshot(folder) == before and not later.exists()  # no history copied into the new folder
