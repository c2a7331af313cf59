"""Every stop names the commands that continue the run, in this session (``--resume-from auto``) and
in a new Kaggle session (``--continue-from`` the previous output), and each command, run as printed,
continues it. ``--resume-from auto`` on the empty folder of a new session says, once, which input to
pass to ``--continue-from``. Kaggle's folders are temporary ones here (``run_config``'s constants)."""
import os
import re
import shlex
import shutil
import signal
import threading

import pytest

from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from engine.training import run_config
from tests.cli.in_process import run_cli
from tests.conftest import tiny_flags

pytestmark = pytest.mark.timeout(600)
COMMAND = re.compile(r"`python train_ultimate\.py (train [^`]*)`")
INPUT_NAME = "<input-folder>"


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """``(working, input)``: Kaggle's /kaggle/working and /kaggle/input as temporary folders."""
    working, inputs = tmp_path / "kaggle" / "working", tmp_path / "kaggle" / "input"
    working.mkdir(parents=True)
    inputs.mkdir()
    monkeypatch.setattr(run_config, "KAGGLE_WORKING", working)
    monkeypatch.setattr(run_config, "KAGGLE_INPUT", inputs)
    return working, inputs


def commands_in(line: str):
    """The ``train`` commands a message names, as argument lists."""
    return [shlex.split(command) for command in COMMAND.findall(line)]


def the_line(stderr: str, words: str) -> str:
    [line] = [line for line in stderr.splitlines() if words in line]
    return line


def epoch_of(folder) -> int:
    return progress(load_checkpoint(folder / "last.pth"))["epoch"]


def test_a_stop_after_epochs_names_both_commands_and_each_continues_the_run(kaggle):
    working, inputs = kaggle
    folder = working / "checkpoints"
    stopped = run_cli("train", *tiny_flags(), "--checkpoint-dir", folder, "--stop-after-epochs", "1",
                      "--time-limit", "2h")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    same, later = commands_in(the_line(stopped.stderr, "INFO Done: --stop-after-epochs 1 reached at epoch 1"))
    assert same == ["train", "--resume-from", "auto", "--checkpoint-dir", str(folder), "--time-limit", "2h"]
    assert later == ["train", "--continue-from", f"{inputs}/{INPUT_NAME}/checkpoints", "--checkpoint-dir", str(folder),
                     "--time-limit", "2h"]  # --time-limit is not inherited: the message carries it
    shutil.copytree(folder, inputs / "my-notebook" / "checkpoints")  # Save Version: the output, read-only later
    resumed = run_cli(*same)
    assert resumed.returncode == 0 and epoch_of(folder) == 2, resumed.stderr[-2000:]
    shutil.rmtree(folder)  # a new session: /kaggle/working starts empty
    continued = run_cli(*[word.replace(INPUT_NAME, "my-notebook") for word in later])
    assert continued.returncode == 0, continued.stderr[-2000:]
    assert epoch_of(folder) == 2 and "INFO Done: 2/2 epochs complete" in continued.stderr


def test_resume_auto_in_a_new_session_warns_once_naming_the_input_to_continue(kaggle):
    working, inputs = kaggle
    folder = working / "checkpoints"
    previous = inputs / "my-notebook" / "checkpoints"
    previous.mkdir(parents=True)
    for name in ("last.pth", "metrics.jsonl"):
        (previous / name).write_bytes(b"")  # looks like a run: only names are read
    (inputs / "cod10k-dataset" / "COD10K-v3" / "Train").mkdir(parents=True)  # a dataset is no run
    result = run_cli("train", *tiny_flags(), "--checkpoint-dir", folder, "--resume-from", "auto", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    warning = the_line(result.stderr, "--resume-from auto: no checkpoint in")  # once, not twice
    assert f"{previous} holds a previous run" in warning
    assert f"pass --continue-from {previous} --checkpoint-dir {folder} in place of --resume-from auto" in warning


def test_runs_under_kaggle_input_are_found_one_or_two_levels_down(kaggle):
    _, inputs = kaggle
    assert run_config.kaggle_input_runs() == []
    for folder, names in ((inputs / "a-run-uploaded", ("best_model.pth", "metrics.jsonl")),
                          (inputs / "my-notebook" / "checkpoints", ("last.pth", "metrics.jsonl")),
                          (inputs / "weights-only", ("best_model.pth",)),  # no metrics.jsonl: not a run's folder
                          (inputs / "deep" / "one" / "two", ("last.pth", "metrics.jsonl"))):  # three levels down
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"")
    assert run_config.kaggle_input_runs() == [inputs / "a-run-uploaded", inputs / "my-notebook" / "checkpoints"]


def test_a_time_limit_stop_outside_kaggle_names_both_commands(tmp_path):
    folder = tmp_path / "ckpt"
    stopped = run_cli("train", *tiny_flags(), "--checkpoint-dir", folder, "--time-limit", "0.001s")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    same, later = commands_in(the_line(stopped.stderr, "INFO Done: time limit of 0.001s reached"))
    assert same == ["train", "--resume-from", "auto", "--checkpoint-dir", str(folder), "--time-limit", "0.001s"]
    assert later == ["train", "--continue-from", "<the-copy>", "--checkpoint-dir", "<a-new-folder>",
                     "--time-limit", "0.001s"]
    step = progress(load_checkpoint(folder / "last.pth"))["global_step"]
    resumed = run_cli(*same)  # stops again at once, one step further
    assert resumed.returncode == 0 and progress(load_checkpoint(folder / "last.pth"))["global_step"] > step


def test_a_sigterm_stop_names_both_commands(kaggle):
    working, inputs = kaggle
    folder = working / "checkpoints"
    finished = threading.Event()

    def terminate_once_training():  # the handler is installed before the first save
        while not finished.is_set():
            if (folder / "last.pth").exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            finished.wait(0.05)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a late signal must not end pytest
    watcher = threading.Thread(target=terminate_once_training)
    try:
        watcher.start()
        stopped = run_cli("train", *tiny_flags(epochs=50), "--checkpoint-dir", folder, "--save-every-minutes", "0.001")
    finally:
        finished.set()
        watcher.join()
        signal.signal(signal.SIGTERM, previous)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    final = stopped.stderr.strip().splitlines()[-1]
    assert final.startswith("stopped by SIGTERM: last.pth saved at epoch")
    for line in (final, the_line(stopped.stderr, "Stopping: SIGTERM received")):
        same, later = commands_in(line)
        assert same == ["train", "--resume-from", "auto", "--checkpoint-dir", str(folder)]
        assert later == ["train", "--continue-from", f"{inputs}/{INPUT_NAME}/checkpoints", "--checkpoint-dir",
                         str(folder)]
