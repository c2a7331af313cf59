"""A new run never silently replaces the run already in its --checkpoint-dir."""
import pytest

from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from tests.cli.in_process import run_cli
from tests.cli.test_workflow import TINY, copy_run, first_run  # noqa: F401  (module fixture)

pytestmark = pytest.mark.timeout(600)


def snapshot(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def test_a_new_run_into_a_folder_with_a_run_is_refused_and_nothing_changes(first_run, tmp_path):  # noqa: F811
    folder = copy_run(first_run, tmp_path / "ckpt")
    before = snapshot(folder)
    for extra in ([], ["--dry-run"]):
        result = run_cli("train", *TINY, "--checkpoint-dir", folder, *extra)
        assert result.returncode == 2, result.stderr[-2000:]
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("error: --checkpoint-dir") and "already holds a run" in error
        assert "--resume-from auto" in error and "--overwrite" in error
        assert snapshot(folder) == before


def test_overwrite_or_resume_auto_are_the_ways_in(first_run, tmp_path):  # noqa: F811
    folder = copy_run(first_run, tmp_path / "ckpt")
    resumed = run_cli("train", *TINY, "--checkpoint-dir", folder, "--resume-from", "auto", "--epochs", "3", "--dry-run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # (--epochs 3: the 2-epoch run is complete)
    replaced = run_cli("train", *TINY, "--checkpoint-dir", folder, "--epochs", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert progress(load_checkpoint(folder / "last.pth"))["epoch"] == 1  # the old 2-epoch run was replaced
