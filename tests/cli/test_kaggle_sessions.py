"""Kaggle as it really is: each session starts with an empty working folder, and the previous
session's output comes back as a read-only input. Played here with the documented later-session
command (``--continue-from``) and tiny settings; the inputs are read-only bind mounts where the
machine allows mounting (CI does), and otherwise the previous output itself, checked byte for byte."""
from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from tests.cli.in_process import assert_refused, run_cli, run_main, snapshot
from tests.conftest import tiny_flags
from tests.state_compare import assert_same_state

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "guides" / "KAGGLE_GUIDE.md"
SESSION_SETTINGS = dict(synthetic_train_size=None, synthetic_val_size=None, stage2_batch_size=4, epochs=3,
                        log_interval=1, use_ema=True, ema_decay=0.5, keep_checkpoints=1, cache="disk", progress="off")
TINY = tiny_flags(**SESSION_SETTINGS)
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kaggle_data") / "cod"
    assert run_main("synth", "--output", folder, "--num-train", 16, "--num-test", 4, "--size", 64) == 0
    return folder


def guide_commands():
    """The two commands of the Kaggle guide's session section, as argv after ``train_ultimate.py``:
    session 1's and every later session's."""
    text = GUIDE.read_text()
    section = text[text.index("## Splitting a long plan over 12-hour sessions"):text.index("## Two T4s")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [shlex.split(block.replace("\\\n", " ")) for block in blocks]
    assert len(commands) == 2, blocks
    return [words[words.index("train_ultimate.py") + 1:] for words in commands]


def on_this_machine(argv, **paths):
    """``argv`` with the guide's Kaggle paths replaced by this test's folders."""
    kaggle = {"/kaggle/input/cod10k-dataset/COD10K-v3": "dataset", "/kaggle/working/checkpoints": "working",
              "/kaggle/input/my-cod-notebook/checkpoints": "previous"}
    replaced = [str(paths[kaggle[word]]) if word in kaggle else word for word in argv]
    assert not [word for word in replaced if word.startswith("/kaggle")], replaced
    return replaced


def scalar_steps(folder: Path, tag: str):
    events = EventAccumulator(str(folder / "runs"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.mark.slow
def test_three_sessions_from_read_only_inputs_equal_one_uninterrupted_run(dataset, tmp_path, read_only_view):
    """The guide's two commands word for word (paths replaced, tiny settings appended), each session
    stopped by its budget after one epoch, against the session-1 command run to the end."""
    first_command, later_command = guide_commands()
    assert "--continue-from" in later_command and "--config" not in later_command
    straight = tmp_path / "straight" / "checkpoints"
    result = run_cli(*on_this_machine(first_command, dataset=dataset, working=straight), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]

    working = tmp_path / "session1" / "checkpoints"
    first = run_cli(*on_this_machine(first_command, dataset=dataset, working=working), *TINY,
                    "--stop-after-epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    for session in (2, 3):
        # "Save Version": the output comes back read-only; unchanged either way (snapshot below)
        previous = read_only_view(working.parent, required=False) or working.parent
        before = snapshot(previous)
        working = tmp_path / f"session{session}" / "checkpoints"  # a new, empty /kaggle/working
        command = on_this_machine(later_command, previous=previous / "checkpoints", working=working)
        result = run_cli(*command, "--stop-after-epochs", "1")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "--continue-from: copied" in result.stderr
        assert snapshot(previous) == before  # the input is never written to
        # Session 1's resize cache is read in place: session 2 has no miss, so writes no entry.
        if session == 2:
            assert list((previous / "checkpoints" / "resize-cache").glob("*.rc"))
            assert not list((working / "resize-cache").glob("*.rc"))

    assert progress(load_checkpoint(working / "last.pth"))["epoch"] == 3
    # every leaf of the run's state, not only its weights (not where each wrote, nor wall-clock seconds,
    # nor the sessions' own --stop-after-epochs)
    continued = load_checkpoint(working / "last.pth")
    continued["trainer"]["callbacks"].pop("stop_after_epochs")
    assert_same_state(load_checkpoint(straight / "last.pth"), continued, "last.pth",
                      ignore=("last.pth.config.checkpoint_dir", "last.pth.config.resume_from",
                              "last.pth.config.continue_from", "last.pth.config.stop_after_epochs",
                              "last.pth.metrics.seconds"))

    # The last session's output is the whole run: every epoch and every step once.
    rows = [json.loads(line) for line in (working / "metrics.jsonl").read_text().splitlines()]
    straight_rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row, expected in zip(rows, straight_rows):
        assert row["val_iou"] == expected["val_iou"] and row["train_loss"] == expected["train_loss"]
    for tag in ("train/step_loss", "val/iou"):
        assert scalar_steps(working, tag) == scalar_steps(straight, tag)
    best_straight = load_checkpoint(straight / "best_model.pth")
    assert progress(load_checkpoint(working / "best_model.pth")) == progress(best_straight)
    assert (working / "config.yaml").is_file() and (working / "report").is_dir()


def test_a_later_session_without_its_input_is_refused_and_writes_nothing(tmp_path):
    working = tmp_path / "working" / "checkpoints"
    result = run_cli("train", "--continue-from", tmp_path / "input" / "missing", "--checkpoint-dir", working)
    assert_refused(result, "--continue-from", "does not exist", "Add Input")
    assert not working.parent.exists()
    empty = tmp_path / "input" / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "checkpoints" / "metrics.jsonl").write_text("")
    result = run_cli("train", "--continue-from", empty, "--checkpoint-dir", working)
    assert_refused(result, "holds no run")
    assert not working.parent.exists()


def test_the_later_session_command_run_again_in_one_session_resumes_its_own_copy(tmp_path):
    first = tmp_path / "session1" / "checkpoints"
    tiny = tiny_flags(**dict(SESSION_SETTINGS, cache=None))
    assert run_cli("train", *tiny, "--checkpoint-dir", first, "--stop-after-epochs", "1").returncode == 0
    working = tmp_path / "session2" / "checkpoints"
    assert run_cli("train", "--continue-from", first, "--checkpoint-dir", working,
                   "--stop-after-epochs", "1").returncode == 0
    again = run_cli("train", "--continue-from", first, "--checkpoint-dir", working, "--stop-after-epochs", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already holds the continued run" in again.stderr and "copied" not in again.stderr
    assert progress(load_checkpoint(working / "last.pth"))["epoch"] == 3


@pytest.mark.parametrize("flags, words", [
    (["--resume-from", "auto"], "drop --resume-from"),
    (["--checkpoint-dir", "SAME"], "also the --checkpoint-dir"),
])
def test_continue_from_refuses_contradictions(flags, words, tmp_path):
    flags = [str(tmp_path / "run") if flag == "SAME" else flag for flag in flags]
    assert_refused(run_cli("train", "--continue-from", tmp_path / "run", *flags, "--dry-run"), words)


def test_resume_auto_on_an_empty_folder_warns_that_it_starts_anew(tmp_path, caplog):
    from engine.training.run_config import find_resume_path

    with caplog.at_level(logging.WARNING, logger="engine.training.run_config"):
        assert find_resume_path("auto", str(tmp_path / "empty")) is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING and str((tmp_path / "empty").resolve()) in record.getMessage()
    assert "--continue-from" in record.getMessage()
