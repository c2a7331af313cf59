"""The Kaggle notebook runs as written: two sessions (start, then --continue-from the first one's
output), with tiny settings in its parameters cell and a synthetic set in the COD10K-v3 layout."""
import json
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
    """The notebook with its parameters cell replaced by ``parameters``, executed in the repository root."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    cell.source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    return notebook


def outputs(notebook, kind):
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
            if kind in output.get("data", {})]


def test_two_sessions_train_continue_evaluate_and_predict(tmp_path):
    data = tmp_path / "input" / "synthetic"
    assert run_cli("synth", "--output", data, "--num-train", 12, "--num-test", 3, "--size", 64).returncode == 0
    settings = dict(INSTALL=False, CONFIG="configs/cod10k_camo_edgenext_base.yaml", DATASET_PATHS=[str(data)],
                    TEST_SETS=[str(data)], PREVIOUS_SESSION="", TIME_LIMIT="11.5h",
                    PREDICT_IMAGES=str(data / "Test" / "Image"), PREDICT_COUNT=2, REPO_URL="", CODE_DATASET="")
    first = tmp_path / "session1"
    # the first session ends after one epoch, as a session that reached its time limit would
    execute(dict(settings, WORK=str(first), EXTRA_FLAGS=[*TINY, "--stop-after-epochs", "1"]))
    assert len((first / "checkpoints" / "metrics.jsonl").read_text().splitlines()) == 1
    second = tmp_path / "session2"
    notebook = execute(dict(settings, WORK=str(second), EXTRA_FLAGS=[],
                            PREVIOUS_SESSION=str(first / "checkpoints")))
    rows = [json.loads(line) for line in (second / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # epoch 1 copied from the first session, epoch 2 trained
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
