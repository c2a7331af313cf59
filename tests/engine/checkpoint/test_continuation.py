"""engine.checkpoint.continuation: which checkpoint a later session continues, and what it copies."""
import shutil

import pytest

from engine.checkpoint.continuation import copy_run_history, previous_run_checkpoint
from engine.checkpoint.format import CheckpointError


def test_the_whole_output_folder_of_a_notebook_is_accepted(tiny_run_dir, tmp_path):
    output = tmp_path / "notebook-output"
    shutil.copytree(tiny_run_dir, output / "checkpoints")
    assert previous_run_checkpoint(output) == output / "checkpoints" / "last.pth"
    assert previous_run_checkpoint(output / "checkpoints") == output / "checkpoints" / "last.pth"


def test_two_runs_in_one_output_must_be_told_apart(tiny_run_dir, tmp_path):
    for name in ("phase1", "phase2"):
        shutil.copytree(tiny_run_dir, tmp_path / "output" / name)
    with pytest.raises(CheckpointError, match="holds 2 runs"):
        previous_run_checkpoint(tmp_path / "output")


@pytest.mark.parametrize("make, words", [(lambda folder: None, "does not exist"),
                                         (lambda folder: folder.mkdir(), "holds no run")])
def test_a_missing_or_empty_input_is_refused(make, words, tmp_path):
    make(tmp_path / "input")
    with pytest.raises(CheckpointError, match=words):
        previous_run_checkpoint(tmp_path / "input")


def test_the_history_is_copied_and_the_snapshots_are_not(tiny_run_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_run_dir, source)
    shutil.copyfile(source / "last.pth", source / "epoch_7.pth")
    (source / "resize-cache").mkdir()
    (source / "resize-cache" / "entry.rc").write_bytes(b"x")
    copied = copy_run_history(source / "last.pth", tmp_path / "target")
    assert copied[-1] == "last.pth"  # last: a copy cut short leaves nothing to resume
    names = {path.name for path in (tmp_path / "target").iterdir()}
    assert {"last.pth", "best_model.pth", "metrics.jsonl", "config.yaml", "runs", "report"} <= names
    assert not names & {"epoch_7.pth", "resize-cache"}
    for name in ("last.pth", "best_model.pth", "metrics.jsonl"):
        assert (tmp_path / "target" / name).read_bytes() == (source / name).read_bytes()
    assert not list((tmp_path / "target").glob(".*"))  # no temp file left
