"""A package missing at run time (offline Kaggle) is one line naming it and the pip command, exit 2; a run
whose settings do not need pysodmetrics trains without it."""
import subprocess
import sys

import pytest

from engine.packages import MissingPackageError, as_missing_package
from tests.cli.in_process import ROOT, assert_refused, run_cli
from tests.conftest import tiny_flags

pytestmark = pytest.mark.timeout(600)


def _hidden(monkeypatch, *modules):
    """``import module`` fails from now on in this process, as if the package were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("dry_run", [False, True])
def test_best_metric_sm_without_pysodmetrics_is_refused_before_training(monkeypatch, tmp_path, dry_run):
    _hidden(monkeypatch, "py_sod_metrics")
    result = run_cli("train", *tiny_flags(), "--best-metric", "sm", "--checkpoint-dir", tmp_path / "ckpt",
                     *(["--dry-run"] if dry_run else []))
    assert_refused(result, "pysodmetrics is not installed", "--best-metric sm", "pip install -r requirements.txt",
                   "--no-index")
    assert not (tmp_path / "ckpt").exists()  # refused before the run folder is made, not at the first validation


def test_a_run_that_does_not_score_sm_trains_without_pysodmetrics(tmp_path):
    """A fresh interpreter: no module of the train command may import pysodmetrics when it loads."""
    flags = ["train", *tiny_flags(epochs=1, stage1_epochs=1), "--checkpoint-dir", str(tmp_path / "ckpt")]
    code = ("import sys; sys.modules['py_sod_metrics'] = None; import train_ultimate; "
            f"sys.exit(train_ultimate.main({flags!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "ckpt" / "best_model.pth").is_file()


def test_missing_tensorboard_is_refused_before_training(monkeypatch, tmp_path):
    _hidden(monkeypatch, "tensorboard")
    result = run_cli("train", *tiny_flags(), "--checkpoint-dir", tmp_path / "ckpt")
    assert_refused(result, "tensorboard is not installed", "TensorBoard logs")
    assert not (tmp_path / "ckpt").exists()


def test_a_package_imported_at_the_top_is_one_line_too():
    """cv2 is imported when the train command's modules load: a fresh interpreter where it is missing."""
    code = ("import sys; sys.modules['cv2'] = None; import train_ultimate; "
            "sys.exit(train_ultimate.main(['train', '--dry-run', '--no-pretrained']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_refused(result, "opencv-python-headless is not installed", "pip install -r requirements.txt")


def test_a_missing_module_of_this_repository_stays_a_bug():
    assert as_missing_package(ModuleNotFoundError("No module named 'engine.nope'", name="engine.nope")) is None
    translated = as_missing_package(ModuleNotFoundError("No module named 'skimage'", name="skimage.data"))
    assert isinstance(translated, MissingPackageError) and "scikit-image is not installed" in str(translated)
