"""Every command in README.md, guides/*.md and docs/*.md runs as written, in document order, on a fake /kaggle tree.

Each document is read as one or more Kaggle sessions over shared inputs, the datasets a user adds
(``tests/docs/fake_kaggle.py``: synthetic scenes in each layout the docs name). Its ``bash`` blocks run
in order as bash scripts in one ``/kaggle/working`` (and one working folder for relative paths, as in
a fresh clone), so a command that reads an earlier one's output is checked against that output.
Only settings that shrink the work are appended to ``train`` (backbone, sizes, epochs, workers), and
only where the command does not set them itself; the epoch counts always shrink.

A block of plain ``python train_ultimate.py`` lines runs them in this process (``in_process.run_cli``,
in the working folder: the interpreter start-up is most of a tiny command's time); a block with
shell syntax (``$VAR``, ``$(...)``) runs as a bash script with ``python`` being this interpreter.

What happens between commands on Kaggle happens here too: ``pip install`` lines are not run (the
test environment has the requirements), and a ``--continue-from /kaggle/input/X/checkpoints`` that
does not exist yet is the previous session's saved output: the current ``/kaggle/working`` is copied
there and a fresh, empty ``/kaggle/working`` begins.

Markers in the documents (HTML comments, invisible when rendered):

- ``<!-- not run here: REASON -->`` on the line above a block: it needs a GPU or the real data, or
  it sets up the machine (``make``, ``git clone``, ``pip``); every bash block without a
  ``train_ultimate.py`` command needs one. ``not_run_here()`` lists those blocks with their reasons
  (``test_blocks_not_run_here_say_why`` records them as the test's ``not_run_here`` property), and
  the ``train_ultimate.py`` commands in them still parse with the real parser and name existing
  ``--config`` files (``test_every_documented_command_parses``).
- ``<!-- new session -->`` above a block: it starts a new Kaggle session (empty ``/kaggle/working``),
  for a block that is an alternative to the ones before it rather than their next step.
- ``<!-- starts from: README.md -->`` anywhere in a document: it begins where the README's commands
  left ``/kaggle/working`` (a phase-1 run, the plateau run, the EMA run, eval and predict outputs).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_flags import build_parser
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import has_ema, progress
from tests.cli.in_process import run_cli

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "guides").glob("*.md")), *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!-- not run here: (.+?) -->\s*\n```\w*\n$")
NEW_SESSION = re.compile(r"<!-- new session -->\s*\n```\w*\n$")
STARTS_FROM = re.compile(r"<!-- starts from: (\S+)")
FENCE = re.compile(r"```(\w*)\n(.*?)```", flags=re.S)
COMMAND = re.compile(r"^\s*(?:\S+=\S+\s+)*(?:python3?|torchrun(?:\s+--\S+(?:\s+\d+)?)*)\s+train_ultimate\.py\s", re.M)
TINY = {"--backbone": "test_convnext", "--num-experts": "3", "--decoder-channels": "16", "--img-size": "48",
        "--batch-size": "4", "--stage2-batch-size": "4", "--epochs": "2", "--stage1-epochs": "1",
        "--num-workers": "0", "--progress": "off", "--synthetic-train-size": "8", "--synthetic-val-size": "4"}
RESUME_TINY = {"--num-workers": "0", "--progress": "off"}  # a resume keeps its model and sizes
ALWAYS_SHRUNK = ("--epochs", "--stage1-epochs")
INSTALLS = ("pip install", "!pip install")  # not run: the test environment has the requirements
RUNS = (pytest.mark.slow, pytest.mark.timeout(900))  # the tests that run commands; the others only read


def runs(test):
    for mark in RUNS:
        test = mark(test)
    return test


def bash_blocks(document: Path, commands: bool):
    """``(line, bash text, reason not run or None, starts a new session)`` of each bash block, in order:
    those with a train_ultimate.py command (``commands``) or those without."""
    text = document.read_text()
    found = []
    for match in FENCE.finditer(text):
        language, body = match.groups()
        if language != "bash" or bool(COMMAND.search(body)) != commands:
            continue
        before = text[max(0, match.start() - 300):match.start() + len(language) + 4]
        reason = NOT_RUN.search(before)
        found.append((text.count("\n", 0, match.start()) + 1, body, reason.group(1) if reason else None,
                      bool(NEW_SESSION.search(before))))
    return found


def blocks(document: Path):
    """The command blocks this file runs (or marks not run)."""
    return bash_blocks(document, commands=True)


def tiny(words, resume_epochs: int = 3):
    """Append the shrinking settings a train command does not set itself; a resume trains to
    ``resume_epochs`` (more than the run it resumes has, so that it trains at all)."""
    if "train_ultimate.py" not in words:
        return words
    command = words[words.index("train_ultimate.py") + 1:]
    if not command or command[0] != "train":
        return words
    resuming = resumes(words)
    settings = dict(RESUME_TINY, **{"--epochs": str(resume_epochs)}) if resuming else dict(TINY)
    if "--pretrained-path" in words:
        settings.pop("--backbone")  # the weights file fits the documented backbone
    elif not resuming and "--no-pretrained" not in words:
        words = [*words, "--no-pretrained"]
    extra = [item for flag, value in settings.items() if flag not in words or flag in ALWAYS_SHRUNK
             for item in (flag, value)]  # argparse keeps the last value of a flag
    return [*words, *extra]


def resumes(words) -> bool:
    return any(flag in words for flag in ("--resume-from", "--continue-from"))


def script(body: str, kaggle: Path, shrink=tiny) -> str:
    """The block as bash: Kaggle paths moved under ``kaggle``, train commands shrunk, installs skipped."""
    lines = []
    for line in joined_lines(body):
        line = line.replace("/kaggle/", f"{kaggle}/")
        stripped = line.strip()
        if stripped.startswith(INSTALLS):
            lines.append(f": skipped, the test environment has it: {shlex.quote(stripped)}")
        elif COMMAND.match(line):
            words = shlex.split(stripped, comments=True)
            lines.append(" ".join(word if "$" in word else shlex.quote(word) for word in shrink(words)))
        else:
            lines.append(line)
    return "\n".join(["set -euo pipefail", *lines])


def joined_lines(body: str) -> list:
    return body.replace("\\\n", " ").splitlines()


def in_process_commands(body: str, kaggle: Path, shrink=tiny):
    """The block's commands as ``train_ultimate.py`` argument lists (shrunk, Kaggle paths moved), or
    None when the block needs a shell: variables, substitutions, or a line that is not such a command."""
    commands = []
    for line in joined_lines(body):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", *INSTALLS)):
            continue
        if "$" in stripped or not re.match(r"python3? train_ultimate\.py\s", stripped):
            return None
        words = shrink(shlex.split(stripped.replace("/kaggle/", f"{kaggle}/"), comments=True))
        commands.append(words[2:])
    return commands


def new_session(working: Path) -> None:
    shutil.rmtree(working)
    working.mkdir()


def save_for_continue(body: str, kaggle: Path, working: Path) -> None:
    """Save the session's output as the input a ``--continue-from`` names, then start a new session."""
    for source in re.findall(r"--continue-from\s+(\S+)", "\n".join(joined_lines(body))):
        target = Path(source.replace("/kaggle/", f"{kaggle}/"))
        if not target.exists() and (working / target.name).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(working / target.name, target)
            new_session(working)


def environment(tmp: Path) -> dict:
    """An environment whose ``python`` is this interpreter and which imports this repository."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "python3"):  # a script, not a link: a venv is found from its own bin/ folder
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
            "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}


class Session:
    """One fake machine: ``kaggle/{input,working}`` and a clone-like working folder."""

    def __init__(self, tmp: Path, inputs: Path):
        self.kaggle = tmp / "kaggle"
        self.working = self.kaggle / "working"
        self.folder = tmp / "clone"  # relative paths (checkpoints/demo, configs/...) as in a fresh clone
        self.working.mkdir(parents=True)
        shutil.copytree(inputs, self.kaggle / "input", symlinks=True)  # continue-from saves land in input/
        self.folder.mkdir()
        for name in ("configs", "models", "train_ultimate.py"):
            (self.folder / name).symlink_to(ROOT / name)
        self.env = environment(tmp)
        self.stderr = {}
        self.resume_epochs = 3  # each resume trains one epoch further than the one before

    def take_over(self, other: "Session") -> None:
        """Begin where ``other`` ended: its working folders and the inputs it saved."""
        for source, target in ((other.working, self.working), (other.kaggle / "input", self.kaggle / "input")):
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        self.resume_epochs = other.resume_epochs

    def shrink(self, words):
        if resumes(words):
            self.resume_epochs += 1
            return tiny(words, self.resume_epochs - 1)
        return tiny(words)

    def run(self, document: Path) -> None:
        """Run the document's blocks in order, but those not run here."""
        for line, body, reason, fresh in blocks(document):
            where = f"{document.relative_to(ROOT)}:{line}"
            if reason:
                continue
            if fresh:
                new_session(self.working)
            save_for_continue(body, self.kaggle, self.working)
            commands = in_process_commands(body, self.kaggle, self.shrink)
            if commands is None:
                self.check(where, line, script(body, self.kaggle, self.shrink))
            for command in commands or []:
                self.check(where, line, command)

    def check(self, where: str, line: int, command) -> None:
        """Run one command (argument list: in this process) or bash script (str); it must succeed."""
        if isinstance(command, str):
            text, result = command, subprocess.run(["bash", "-c", command], cwd=self.folder, env=self.env,
                                                   capture_output=True, text=True, timeout=600)
        else:
            text, result = shlex.join(["python", "train_ultimate.py", *command]), run_cli(*command, cwd=self.folder)
        assert result.returncode == 0, (f"{where} failed (exit {result.returncode}):\n{text}\n"
                                        f"--- stderr ---\n{result.stderr[-3000:]}")
        self.stderr[line] = self.stderr.get(line, "") + result.stderr


@pytest.fixture(scope="module")
def kaggle_inputs(tmp_path_factory):
    """The shared ``/kaggle/input``: every dataset the documents name, in its documented layout."""
    from tests.docs.fake_kaggle import build_inputs

    inputs = tmp_path_factory.mktemp("inputs")
    build_inputs(inputs)
    return inputs


@pytest.fixture(scope="module")
def readme_session(kaggle_inputs, tmp_path_factory):
    """The README's commands run once; the documents that start from it copy its end state."""
    session = Session(tmp_path_factory.mktemp("readme"), kaggle_inputs)
    try:
        session.run(README)
        session.failure = None
    except AssertionError as failure:
        session.failure = str(failure)
    return session


def documents_with_commands():
    return [document for document in DOCUMENTS if document != README and blocks(document)]


def documents_that_start_from_readme():
    return [document for document in DOCUMENTS if document != README
            and any(name == "README.md" for name in STARTS_FROM.findall(document.read_text()))]


@runs
def test_readme_commands_chain_best_weights_and_replan(readme_session):
    """The quickstart, continued in a second session, then the plateau run and phase 2 on its best weights."""
    assert readme_session.failure is None, readme_session.failure
    working = readme_session.working
    logs = "\n".join(readme_session.stderr.values())
    first_best = working / "checkpoints" / "best_model.pth"
    plateau_best = working / "checkpoints_plateau" / "best_model.pth"
    assert f"continuing the run of {first_best}" in logs  # the plateau run starts from phase 1's best
    assert "changed schedule settings" in logs and "stage2-lr: 0.0002 -> 0.0001" in logs  # the plateau run re-plans
    assert progress(load_checkpoint(plateau_best))["epoch"] > progress(load_checkpoint(first_best))["epoch"]
    assert f"continuing the run of {plateau_best}" in logs  # phase 2 starts from the plateau's best
    assert "the EMA shadow starts from the loaded weights" in logs
    assert has_ema(load_checkpoint(working / "checkpoints_ema" / "best_model.pth"))
    for output in ("eval.json", "eval_ema.json", "masks", "camo_ema.safetensors", "camo.pt2"):
        assert (working / output).exists(), output


@runs
@pytest.mark.parametrize("document", documents_with_commands(),
                         ids=[str(d.relative_to(ROOT)) for d in documents_with_commands()])
def test_document_commands_run_in_order(document, kaggle_inputs, readme_session, tmp_path):
    session = Session(tmp_path, kaggle_inputs)
    if document in documents_that_start_from_readme():
        assert readme_session.failure is None, f"{document.name} starts from the README, whose commands failed"
        session.take_over(readme_session)
    session.run(document)


def test_every_command_block_is_seen():
    """A command in a block fenced other than ``bash`` would escape the test above."""
    for document in DOCUMENTS:
        for language, body in FENCE.findall(document.read_text()):
            if language != "bash":
                assert not COMMAND.search(body), f"{document.name}: fence the command block as ```bash: {body[:80]}"


def not_run_here():
    """``(document:line, reason)`` of every bash block this file does not run."""
    return [(f"{document.relative_to(ROOT)}:{line}", reason) for document in DOCUMENTS
            for line, _, reason, _ in sorted([*blocks(document), *bash_blocks(document, commands=False)]) if reason]


def test_blocks_not_run_here_say_why(record_property):
    """The blocks this file does not run (a GPU, the real data, the machine's set-up) each name their
    reason. A bash block without a train_ultimate.py command is not run above, so it must say why,
    or where else it runs."""
    silent = [f"{document.relative_to(ROOT)}:{line}" for document in DOCUMENTS
              for line, _, reason, _ in bash_blocks(document, commands=False) if reason is None]
    assert not silent, f"mark these bash blocks <!-- not run here: REASON --> or run them: {silent}"
    not_run = not_run_here()
    assert all(reason.strip() for _, reason in not_run)
    record_property("not_run_here", "; ".join(f"{where} ({reason})" for where, reason in not_run))


def documented_commands():
    """``(document:line, argv after train_ultimate.py)`` of every command in the bash blocks, run or not."""
    found = []
    for document in DOCUMENTS:
        for line, body, _, _ in blocks(document):
            for text in joined_lines(body):
                if COMMAND.match(text):
                    words = shlex.split(text, comments=True)
                    found.append((f"{document.relative_to(ROOT)}:{line}", words[words.index("train_ultimate.py") + 1:]))
    return found


def test_every_documented_command_parses():
    """Also the commands of the blocks not run here (a GPU, the real data): the flags exist, take the
    values written, and a --config file named is in the repository."""
    commands = documented_commands()
    assert len(commands) >= 5
    for where, argv in commands:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: train_ultimate.py {shlex.join(argv)} does not parse")
        config = getattr(args, "config", None)
        assert not config or "$" in config or (ROOT / config).exists(), f"{where} names a missing --config {config}"


@runs
def test_make_demo_runs_as_the_makefile_says(tmp_path):
    """The README's first command: the Makefile's demo recipe, shrunk like the commands above
    (``make test`` is this suite itself). Run twice, as a user would: the second run trains again."""
    recipe = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    words = shlex.split(recipe.replace("$(PY)", "python"))
    assert words[:3] == ["python", "train_ultimate.py", "train"], recipe
    for name in ("configs", "models", "train_ultimate.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    history = tmp_path / "checkpoints" / "demo" / "metrics.jsonl"  # where the README says the demo writes
    for run in ("first", "second"):
        result = run_cli(*tiny(words)[2:], cwd=tmp_path)
        assert result.returncode == 0, f"{run} make demo: {result.stderr[-2000:]}"
        assert (tmp_path / "checkpoints" / "demo" / "best_model.pth").exists()
        assert [json.loads(line)["epoch"] for line in history.read_text().splitlines()] == [1, 2], run
