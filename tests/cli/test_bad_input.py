"""Every user error: exit code 2, one line naming the problem, no traceback, nothing on disk changed."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.layouts import DatasetError
from tests.cli.in_process import run_cli, snapshot
from tests.conftest import tiny_flags

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_flags(synthetic_train_size=None, synthetic_val_size=None, lr=None, stage2_lr=None)


def run_train(*args):
    """``train_ultimate.py train *args`` in this process (an uncaught exception fails the test)."""
    return run_cli("train", *args)


def run_train_subprocess(*args):
    """The real ``python train_ultimate.py train *args``: also sees import-time output and C-level stderr."""
    return subprocess.run([sys.executable, str(ROOT / "train_ultimate.py"), "train", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


RUNNERS = {"in-process": run_train, "subprocess": run_train_subprocess}
pytestmark = pytest.mark.timeout(300)  # in-process runs lost subprocess.run's timeout: pytest-timeout instead


def write_pair(folder: Path, stem: str, image=True, mask=True, size=(40, 30)):
    (folder / "Train" / "Image").mkdir(parents=True, exist_ok=True)
    (folder / "Train" / "GT_Object").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    if image:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / "Train" / "Image" / f"{stem}.jpg")
    if mask:
        Image.fromarray((rng.random(size) > 0.5).astype(np.uint8) * 255).save(folder / "Train" / "GT_Object" / f"{stem}.png")


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A checkpoint folder from a real tiny run, whose bytes must survive every failed command."""
    from engine.build import build_trainer
    from engine.config import build_config
    from tests.conftest import TINY_SETTINGS

    folder = tmp_path_factory.mktemp("existing")
    build_trainer(build_config({}, dict(TINY_SETTINGS, epochs=1, checkpoint_dir=str(folder)))).fit()
    return folder


def dataset_with(tmp_path, kind):
    root = tmp_path / "COD10K-v3"
    if kind == "missing":
        return root
    root.mkdir()
    if kind == "empty":
        (root / "Train" / "Image").mkdir(parents=True)
        (root / "Train" / "GT_Object").mkdir(parents=True)
        return root
    for index in range(6):
        write_pair(root, f"COD10K-CAM-1-Aquatic-1-BatFish-{index}")
    if kind == "unpaired":
        write_pair(root, "COD10K-CAM-2-Terrestrial-9-Cat-1", mask=False)
    if kind == "swapped":  # mask 30x40 (W x H) for a 40x30 image
        write_pair(root, "COD10K-CAM-2-Terrestrial-9-Cat-1", image=False, size=(40, 30))
        write_pair(root, "COD10K-CAM-2-Terrestrial-9-Cat-1", mask=False, size=(30, 40))
    if kind == "truncated":
        image = root / "Train" / "Image" / "COD10K-CAM-1-Aquatic-1-BatFish-3.jpg"
        image.write_bytes(image.read_bytes()[:200])
    return root


# One case also through a real subprocess: a truncated JPEG is where a decoder could write to fd 2 behind
# Python's back, which the in-process capture would not see.
@pytest.mark.parametrize("kind, words, runner", [
    ("missing", "not found", "in-process"), ("empty", "no image files", "in-process"),
    ("unpaired", "COD10K-CAM-2-Terrestrial-9-Cat-1", "in-process"), ("truncated", "BatFish-3.jpg", "in-process"),
    ("swapped", "Cat-1.png: the mask is 30x40 but its image is 40x30", "in-process"),
    ("truncated", "BatFish-3.jpg", "subprocess"),
])
def test_dataset_problems(kind, words, runner, tmp_path, checkpoint_dir):
    before = snapshot(checkpoint_dir)
    result = RUNNERS[runner](*TINY, "--dataset-path", str(dataset_with(tmp_path, kind)),
                             "--checkpoint-dir", str(checkpoint_dir), "--resume-from", "auto")
    assert result.returncode == 2, result.stderr[-1500:]
    assert "Traceback" not in result.stderr and words.lower() in result.stderr.lower()
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert snapshot(checkpoint_dir) == before


@pytest.mark.parametrize("kind, flag", [("truncated", "--skip-bad-samples"), ("swapped", "--skip-bad-samples"),
                                        ("unpaired", "--skip-unpaired")])
def test_dataset_problem_hint_mentions_skip_flag(kind, flag, tmp_path):
    from engine.config import build_config
    from engine.training.data_module import scan_data

    config = build_config({}, {"dataset_path": str(dataset_with(tmp_path, kind)), "backbone": "test_convnext",
                               "checkpoint_dir": str(tmp_path / "c")})
    with pytest.raises(DatasetError) as excinfo:
        scan_data(config)
    assert flag in str(excinfo.value) and "\n" not in str(excinfo.value)


def damaged_checkpoint(tmp_path, checkpoint_dir, kind):
    target = tmp_path / f"{kind}.pth"
    data = (checkpoint_dir / "last.pth").read_bytes()
    if kind == "truncated":
        target.write_bytes(data[: len(data) // 3])
    elif kind == "text":
        target.write_text("hello")
    return target


@pytest.mark.parametrize("flags, words", [
    (["--resume-from", "{truncated}"], "truncated"),
    (["--resume-from", "{text}"], "not a PyTorch checkpoint"),
    (["--resume-from", "{last}", "--num-experts", "4"], "--num-experts 4 (checkpoint: 3)"),
    (["--resume-from", "{last}", "--backbone", "test_efficientnet"], "(checkpoint: test_convnext); drop these"),
    (["--resume-from", "{last}", "--min-feature-stride", "4"], "--min-feature-stride 4 (checkpoint: 8)"),
    (["--backbone", "edgenext_bse"], "edgenext_base"),
    (["--ema-decay", "-0.1"], "--ema-decay"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "-3"], "--epochs"),
])
def test_checkpoint_and_flag_problems(flags, words, tmp_path, checkpoint_dir):
    paths = {"truncated": damaged_checkpoint(tmp_path, checkpoint_dir, "truncated"),
             "text": damaged_checkpoint(tmp_path, checkpoint_dir, "text"), "last": checkpoint_dir / "last.pth"}
    flags = [flag.format(**paths) for flag in flags]
    before = snapshot(checkpoint_dir)
    result = run_train(*TINY, *flags, "--checkpoint-dir", str(checkpoint_dir))
    assert result.returncode == 2, result.stderr[-1500:]
    assert "Traceback" not in result.stderr and words in result.stderr, result.stderr[-600:]
    assert snapshot(checkpoint_dir) == before


def test_checkpoint_dir_that_is_a_file(tmp_path):
    target = tmp_path / "not_a_folder"
    target.write_text("keep me")
    result = run_train(*TINY, "--synthetic-train-size", "8", "--checkpoint-dir", str(target))
    assert result.returncode == 2 and "--checkpoint-dir" in result.stderr and "Traceback" not in result.stderr
    assert target.read_text() == "keep me"


def test_skip_bad_samples_drops_and_reports(tmp_path, caplog):
    from engine.config import build_config
    from engine.training.data_module import build_data

    root = dataset_with(tmp_path, "truncated")
    config = build_config({}, {"dataset_path": str(root), "skip_bad_samples": True, "val_fraction": 0.2,
                               "backbone": "test_convnext", "checkpoint_dir": str(tmp_path / "c")})
    data = build_data(config, ((0.5,) * 3, (0.5,) * 3))
    assert len(data.train_dataset) + len(data.val_dataset) == 5
    assert "BatFish-3.jpg" in caplog.text
    assert "are empty" not in caplog.text


def test_skip_bad_samples_drops_a_swapped_mask(tmp_path, caplog):
    from engine.config import build_config
    from engine.training.data_module import scan_data

    config = build_config({}, {"dataset_path": str(dataset_with(tmp_path, "swapped")), "skip_bad_samples": True,
                               "val_fraction": 0.2, "backbone": "test_convnext", "checkpoint_dir": str(tmp_path / "c")})
    sources = scan_data(config)
    assert len(sources.train_pairs) + len(sources.val_pairs) == 6
    assert "Cat-1" not in {pair.name[-5:] for pair in sources.train_pairs + sources.val_pairs}
    assert "Skipping 1 bad sample(s) (--skip-bad-samples)" in caplog.text and "swapped" in caplog.text


def test_skip_unpaired_trains_on_the_complete_pairs(tmp_path, caplog):
    from engine.config import build_config
    from engine.training.data_module import scan_data

    root = dataset_with(tmp_path, "unpaired")
    write_pair(root, "COD10K-CAM-3-Flying-1-Bird-1", image=False)
    config = build_config({}, {"dataset_path": str(root), "skip_unpaired": True, "val_fraction": 0.2,
                               "backbone": "test_convnext", "checkpoint_dir": str(tmp_path / "c")})
    sources = scan_data(config)
    assert len(sources.train_pairs) + len(sources.val_pairs) == 6
    assert (f"Skipped 1 masks without images and 1 images without masks in {root / 'Train'} (--skip-unpaired)"
            in caplog.text)


def test_all_empty_masks_are_warned_about(tmp_path, caplog):
    from engine.config import build_config
    from engine.training.data_module import scan_data

    root = dataset_with(tmp_path, "complete")
    for mask in (root / "Train" / "GT_Object").iterdir():
        Image.fromarray(np.zeros((40, 30), np.uint8)).save(mask)
    config = build_config({}, {"dataset_path": str(root), "backbone": "test_convnext",
                               "checkpoint_dir": str(tmp_path / "c")})
    scan_data(config)
    warnings = [record.getMessage() for record in caplog.records if "are empty" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"All 6 masks in {root} are empty")


def test_wrong_dataset_path_fails_before_the_model_is_built(tiny_config, tmp_path, monkeypatch):
    import engine.build
    from data.layouts import DatasetError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the dataset was checked")

    monkeypatch.setattr(engine.build, "build_model", no_model)
    with pytest.raises(DatasetError, match="nowhere"):
        engine.build.build_trainer(tiny_config(dataset_path=str(tmp_path / "nowhere")))
