"""The Kaggle notebook runs as written, as the week goes: session 1 starts the run, a later session
continues it from session 1's output added as an input, and a later session that forgot the input or
the variable stops in one line instead of starting over. Tiny settings in its parameters cell and a
synthetic set in the COD10K-v3 layout."""
import json
import re
import shutil
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

from engine.evaluation.cod_metrics import METRIC_NAMES
from tests.cli.in_process import run_cli

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "kaggle_train_cod.ipynb"
TINY = ["--backbone", "test_convnext", "--no-pretrained", "--num-experts", "3", "--decoder-channels", "16",
        "--img-size", "48", "--batch-size", "4", "--stage2-batch-size", "4", "--epochs", "2", "--stage1-epochs", "1",
        "--num-workers", "0", "--val-fraction", "0.25", "--no-progressive-unfreeze"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def execute(parameters: dict):
    """The notebook with its parameters cell replaced by ``parameters``, executed in the repository root;
    returns it and the error that stopped it (None when every cell ran)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    cell.source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    try:
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    except nbclient.exceptions.CellExecutionError:
        errors = [output for cell in notebook.cells if cell.cell_type == "code"
                  for output in cell.get("outputs", []) if output.output_type == "error"]
        return notebook, errors[0]
    return notebook, None


def outputs(notebook, kind):
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
            if kind in output.get("data", {})]


def printed(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.output_type == "stream")


def time_limit_hours(notebook) -> float:
    """The --time-limit of the train command the notebook printed: with its unit, hours."""
    (value,) = re.findall(r"^\$ python train_ultimate\.py train .*--time-limit (\d+\.\d\d)h", printed(notebook), re.M)
    return float(value)


def assert_stopped_in_one_line(error, *words):
    assert error is not None, "the notebook ran on"
    assert error.ename == "Stop" and error.traceback == [f"Stop: {error.evalue}"], error  # one line, no traceback
    for word in words:
        assert word in error.evalue, error.evalue


def test_sessions_train_continue_evaluate_predict_and_never_start_over(tmp_path):
    inputs = tmp_path / "input"  # the session's /kaggle/input
    data = inputs / "synthetic"
    assert run_cli("synth", "--output", data, "--num-train", 12, "--num-test", 3, "--size", 64).returncode == 0
    settings = dict(INSTALL=False, CONFIG="configs/cod10k_camo_edgenext_base.yaml", DATASET_PATHS=[str(data)],
                    TEST_SETS=[str(data)], INPUTS=str(inputs), PREVIOUS_SESSION="", SESSION_HOURS=12,
                    RESERVE_HOURS=0.5, PREDICT_IMAGES=str(data / "Test" / "Image"), PREDICT_COUNT=2,
                    REPO_URL="", CODE_DATASET="", EXTRA_FLAGS=[])
    first = tmp_path / "session1"
    # the first session ends after one epoch, as a session that reached its time limit would
    started = time.time()
    notebook, error = execute(dict(settings, WORK=str(first), EXTRA_FLAGS=[*TINY, "--stop-after-epochs", "1"]))
    assert error is None, error
    assert len((first / "checkpoints" / "metrics.jsonl").read_text().splitlines()) == 1
    # the time budget counts from the session's first cell: 12 h - 0.5 h reserve - what the cells before used
    assert 11.5 - (time.time() - started) / 3600 - 0.01 <= time_limit_hours(notebook) <= 11.5
    assert "--save-every-minutes 30" in printed(notebook)  # the README's phase-1 flags

    # Save Version: session 1's output comes back, read-only on Kaggle, as an input of the next session
    previous = inputs / "my-cod-notebook" / "checkpoints"
    shutil.copytree(first / "checkpoints", previous)

    # a later session whose input is missing, or whose variable was left empty, stops before anything runs
    # (with session 1's tiny flags, so that starting over would train: the stop is the notebook's doing)
    for name, stale in (("missing", dict(PREVIOUS_SESSION=str(inputs / "not-added" / "checkpoints"))),
                        ("empty", dict(PREVIOUS_SESSION=""))):
        work = tmp_path / f"session2-{name}"
        _, error = execute(dict(settings, WORK=str(work), EXTRA_FLAGS=TINY, **stale))
        if name == "missing":
            assert_stopped_in_one_line(error, "not-added", "does not exist", "Add Input")
        else:
            assert_stopped_in_one_line(error, str(previous), "PREVIOUS_SESSION =")
        assert not (work / "checkpoints").exists(), f"{name}: a run started over"

    second = tmp_path / "session2"
    notebook, error = execute(dict(settings, WORK=str(second), PREVIOUS_SESSION=str(previous)))
    assert error is None, error
    rows = [json.loads(line) for line in (second / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # epoch 1 copied from the first session, epoch 2 trained
    assert time_limit_hours(notebook) <= 11.5
    # eval's table is the notebook's checkpoint scored on the test set: the same as eval run here
    scores = json.loads((second / "checkpoints" / "scores.json").read_text())["results"]
    again = tmp_path / "again.json"
    assert run_cli("eval", "--checkpoint", second / "checkpoints" / "best_model.pth", "--dataset-path", data,
                   "--output", again).returncode == 0
    expected = json.loads(again.read_text())["results"]
    assert list(scores) == ["synthetic"] and scores.keys() == expected.keys()
    for dataset, rows in expected.items():
        assert scores[dataset].keys() == rows.keys()
        for row, values in rows.items():
            assert set(values) == set(METRIC_NAMES)
            assert scores[dataset][row] == pytest.approx(values, abs=1e-9), (dataset, row)
    assert len(list((second / "masks").glob("*.png"))) == 2
    assert len(outputs(notebook, "image/png")) + len(outputs(notebook, "image/jpeg")) >= 3  # curves and overlays
