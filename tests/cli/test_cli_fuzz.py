"""Property test of the CLI contract over every command: whatever paths, files, numbers and YAML a
user gives, the command exits 0 or 2, never prints a traceback, and leaves every file that existed
before byte-identical (new outputs are allowed, and ``export --overwrite`` may replace an earlier
export). ``LONG_FUZZ=1`` adds a longer search."""
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli.in_process import run_cli

pytestmark = pytest.mark.timeout(600)

NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1", "2", "31", "64", "0.5", "1e12", "18446744073709551616", "abc", ""]
FILE_CONTENTS = {
    "notes.txt": b"just text\n",
    "binary.bin": bytes(range(256)) * 8,
    "garbage.yaml": b"epochs: [1, 2\n: : :\n",
    "list.yaml": b"- a\n- b\n",
    "bad_key.yaml": b"epochz: 3\n",
    "bad_value.yaml": b"lr: fast\nseed: -5\n",
    "huge.yaml": b"img_size: 100000\nwarmup_epochs: .inf\n",
    "empty.json": b"",
    "fake.pth": b"PK\x03\x04 not really a zip",
    "image.jpg": b"\xff\xd8\xff\xe0 truncated jpeg",
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_run_dir, tiny_test_set):
    """Inputs of every kind, and the path names the generator chooses from."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(tiny_run_dir, root / "run")
    shutil.copytree(tiny_test_set, root / "data")
    for name, content in FILE_CONTENTS.items():
        (root / name).write_bytes(content)
    (root / "empty_dir").mkdir()
    paths = {name: root / name for name in FILE_CONTENTS}
    paths.update({
        "missing": root / "missing" / "nothing.pth", "empty_dir": root / "empty_dir", "run": root / "run",
        "checkpoint": root / "run" / "best_model.pth", "last": root / "run" / "last.pth",
        "metrics": root / "run" / "metrics.jsonl", "data": root / "data",
        "data_image": next((root / "data" / "Test" / "Image").iterdir()),
        "data_masks": root / "data" / "Test" / "GT_Object", "images": root / "data" / "Test" / "Image",
        "new_dir": root / "out" / "new_dir", "new_json": root / "out" / "scores.json",
        "new_file": root / "out" / "model.safetensors",
    })
    return root, paths


def path_choice():
    return st.sampled_from(["missing", "empty_dir", "run", "checkpoint", "last", "metrics", "data", "data_image",
                            "data_masks", "images", "new_dir", "new_json", "new_file", *FILE_CONTENTS])


TRAIN_NUMBERS = ["--epochs", "--lr", "--min-lr", "--seed", "--img-size", "--batch-size", "--warmup-epochs",
                 "--weight-decay", "--top-k", "--num-experts", "--val-fraction", "--ema-decay", "--time-limit",
                 "--stage1-epochs", "--num-workers", "--keep-checkpoints", "--backbone-lr-scale"]


@st.composite
def command_lines(draw):
    """``(argv with path names, names of paths in it)``: one of the six commands with drawn values."""
    command = draw(st.sampled_from(["train", "synth", "eval", "predict", "report", "export"]))
    pairs = []

    def path_flag(flag, required=True):
        if required or draw(st.booleans()):
            pairs.append((flag, ("path", draw(path_choice()))))

    if command == "train":
        pairs.append(("--dry-run", None))
        path_flag("--checkpoint-dir")
        path_flag("--config", required=False)
        path_flag("--dataset-path", required=False)
        if draw(st.booleans()):
            pairs.append(("--resume-from", draw(st.sampled_from([("text", "auto"), ("path", draw(path_choice()))]))))
        for flag, value in draw(st.lists(st.tuples(st.sampled_from(TRAIN_NUMBERS), st.sampled_from(NUMBERS)),
                                         max_size=3)):
            pairs.append((flag, ("text", value)))
    elif command == "synth":
        path_flag("--output")
        for flag in ("--num-train", "--num-test", "--size", "--seed"):
            if draw(st.booleans()):
                value = draw(st.sampled_from(["-1", "0", "1", "2", "nan", "1e12", "abc"] if flag != "--size"
                                             else ["-1", "0", "31", "32", "1e12", "nan"]))
                pairs.append((flag, ("text", value)))
    elif command == "eval":
        path_flag("--checkpoint", required=False)
        path_flag("--predictions", required=False)
        path_flag("--dataset-path")
        path_flag("--output", required=False)
        path_flag("--per-image", required=False)
        for flag in ("--img-size", "--batch-size"):
            if draw(st.booleans()):
                pairs.append((flag, ("text", draw(st.sampled_from(NUMBERS)))))
        # workers: only 0 or refused values (starting worker processes would only make the search slower)
        pairs.append(("--num-workers", ("text", draw(st.sampled_from(["0", "0", "-1", "abc"])))))
    elif command == "predict":
        path_flag("--checkpoint")
        path_flag("--input")
        path_flag("--output")
        if draw(st.booleans()):
            pairs.append(("--img-size", ("text", draw(st.sampled_from(NUMBERS)))))
        if draw(st.booleans()):
            pairs.append(("--overwrite", None))
    elif command == "report":
        path_flag("--checkpoint-dir")
    else:
        path_flag("--checkpoint")
        path_flag("--output")
        if draw(st.booleans()):
            pairs.append(("--half", None))
        if draw(st.booleans()):
            pairs.append(("--overwrite", None))
    return command, pairs


def render(command, pairs, paths):
    argv = [command]
    for flag, value in pairs:
        argv.append(flag)
        if value is not None:
            kind, text = value
            argv.append(str(paths[text]) if kind == "path" else text)
    return argv


def file_bytes(root: Path) -> dict:
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def check_contract(sandbox, case):
    root, paths = sandbox
    argv = render(*case, paths)
    before = file_bytes(root)
    replaceable = set()  # export --overwrite may replace an earlier export (an output of an earlier example)
    if argv[0] == "export" and "--overwrite" in argv:
        from engine.commands.export import is_export

        output = Path(argv[argv.index("--output") + 1])
        replaceable = {output} if is_export(output) else set()
    result = run_cli(*argv)
    assert result.returncode in (0, 2), (argv, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, (argv, result.stderr[-2000:])
    if result.returncode == 2:
        assert [line for line in result.stderr.splitlines() if line.startswith("error:")], (argv, result.stderr)
    after = file_bytes(root)
    changed = [str(path) for path, content in before.items() if after.get(path) != content and path not in replaceable]
    assert not changed, (argv, changed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(case=command_lines())
def test_cli_contract(sandbox, case):
    check_contract(sandbox, case)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LONG_FUZZ"), reason="opt-in: the long search runs with LONG_FUZZ=1 (about 15 min)")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=command_lines())
def test_cli_contract_long(sandbox, case):
    check_contract(sandbox, case)
