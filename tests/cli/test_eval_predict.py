"""``eval``, ``predict`` and ``report`` through the real entry point, on one short training run.

The oracle: pysodmetrics run by the test on the PNGs ``predict`` wrote must give the numbers
``eval`` wrote, on a synthetic test set and on a pack of real photographs with hand-made masks.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import py_sod_metrics
import pytest
import torch

from tests.cli.in_process import run_main

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("Smeasure", "meanEm", "maxEm", "adpEm", "wFmeasure", "MAE", "IoU", "Dice")


def run_cli(*args):
    # One thread: tiny models gain nothing from more, and shared CI cores make OpenMP spin-waits crawl.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "train_ultimate.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, env=env)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tiny_run_dir):
    return tiny_run_dir  # the session's tiny run (tests/conftest.py), trained once for every module


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "synthetic"
    assert run_main("synth", "--output", folder, "--num-train", 8, "--num-test", 6, "--size", 64) == 0
    return folder


def save(path, array):
    ok, encoded = cv2.imencode(Path(path).suffix, array)
    assert ok, path
    encoded.tofile(str(path))


@pytest.fixture(scope="module")
def photo_pack(tmp_path_factory):
    """scikit-image photographs at odd sizes in several formats/modes (Imgs + GT), hand-made masks."""
    from skimage import data

    folder = tmp_path_factory.mktemp("data") / "photos"
    (folder / "Imgs").mkdir(parents=True)
    (folder / "GT").mkdir()
    specs = [  # name, photo (RGB or gray), (height, width), file suffix, mode, mask ellipse (cx, cy, ax, ay) in 0-1
        ("astronaut", data.astronaut(), (333, 517), ".jpg", "rgb", (0.5, 0.3, 0.2, 0.25)),
        ("coffee", data.coffee(), (257, 389), ".png", "rgba", (0.45, 0.45, 0.3, 0.28)),
        ("chelsea", data.chelsea(), (300, 451), ".webp", "rgb", (0.4, 0.45, 0.25, 0.35)),
        ("cat", data.cat(), (173, 263), ".bmp", "rgb", (0.45, 0.5, 0.3, 0.35)),
        ("camera", data.camera(), (211, 347), ".png", "gray16", (0.45, 0.4, 0.15, 0.35)),
        ("rocket", data.rocket(), (201, 299), ".jpg", "gray", (0.5, 0.55, 0.08, 0.4)),
    ]
    for name, photo, (height, width), suffix, mode, (cx, cy, ax, ay) in specs:
        image = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if mode == "rgba":
            image = np.dstack([image, np.full((height, width), 255, np.uint8)])
            image[: height // 4, :, 3] = 128  # partly transparent band
        elif mode in ("gray", "gray16"):
            image = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            image = image.astype(np.uint16) * 257 if mode == "gray16" else image
        save(folder / "Imgs" / f"{name}{suffix}", image)
        mask = cv2.ellipse(np.zeros((height, width), np.uint8), (int(cx * width), int(cy * height)),
                           (int(ax * width), int(ay * height)), 10, 0, 360, 255, -1)
        save(folder / "GT" / f"{name}.png", mask)
    return folder


@pytest.fixture(scope="module")
def predictions(run_dir, synthetic_set, photo_pack, tmp_path_factory):
    """predict PNGs of best_model.pth with flip TTA, base and EMA weights (pack, base: in a subprocess)."""
    folder = tmp_path_factory.mktemp("predictions")
    checkpoint = run_dir / "best_model.pth"
    result = run_cli("predict", "--checkpoint", checkpoint, "--input", photo_pack / "Imgs", "--output",
                     folder / "photos_base", "--weights", "base", "--tta", "flip")
    assert result.returncode == 0, result.stderr
    for dataset, images in (("synthetic", synthetic_set / "Test" / "Image"), ("photos", photo_pack / "Imgs")):
        for weights in ("base", "ema"):
            if (dataset, weights) != ("photos", "base"):
                assert run_main("predict", "--checkpoint", checkpoint, "--input", images, "--output",
                                folder / f"{dataset}_{weights}", "--weights", weights, "--tta", "flip") == 0
    return folder


def pysodmetrics_scores(prediction_dir: Path, gt_dir: Path) -> dict:
    sm, em, wfm, mae = (py_sod_metrics.Smeasure(), py_sod_metrics.Emeasure(), py_sod_metrics.WeightedFmeasure(),
                        py_sod_metrics.MAE())
    ious, dices = [], []
    for gt_path in sorted(gt_dir.glob("*.png")):
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        prediction = cv2.imread(str(prediction_dir / gt_path.name), cv2.IMREAD_GRAYSCALE)
        for metric in (sm, em, wfm, mae):
            metric.step(pred=prediction, gt=gt)
        predicted, target = prediction / 255.0 > 0.5, gt > 128
        union, intersection = (predicted | target).sum(), (predicted & target).sum()
        ious.append(1.0 if union == 0 else intersection / union)
        dices.append(1.0 if union == 0 else 2 * intersection / (predicted.sum() + target.sum()))
    curve = em.get_results()["em"]["curve"]
    return {"Smeasure": sm.get_results()["sm"], "meanEm": curve.mean(), "maxEm": curve.max(),
            "adpEm": em.get_results()["em"]["adp"], "wFmeasure": wfm.get_results()["wfm"],
            "MAE": mae.get_results()["mae"], "IoU": np.mean(ious), "Dice": np.mean(dices)}


def test_eval_json_equals_pysodmetrics_on_predict_pngs(run_dir, synthetic_set, photo_pack, predictions, tmp_path):
    output = tmp_path / "scores" / "eval.json"
    result = run_cli("eval", "--checkpoint", run_dir / "best_model.pth", "--dataset-path", synthetic_set, photo_pack,
                     "--weights", "both", "--tta", "flip", "--output", output)
    assert result.returncode == 0, result.stderr
    assert "synthetic" in result.stdout and "photos" in result.stdout and "Smeasure" in result.stdout
    scores = json.loads(output.read_text())["results"]
    assert set(scores) == {"synthetic", "photos"}
    gt_dirs = {"synthetic": synthetic_set / "Test" / "GT_Object", "photos": photo_pack / "GT"}
    for dataset, gt_dir in gt_dirs.items():
        for weights in ("base", "ema"):
            expected = pysodmetrics_scores(predictions / f"{dataset}_{weights}", gt_dir)
            assert set(scores[dataset][weights]) == set(METRICS)
            for metric in METRICS:
                assert scores[dataset][weights][metric] == pytest.approx(expected[metric], abs=1e-4), \
                    (dataset, weights, metric)
    rows = output.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == "dataset,method," + ",".join(METRICS) and len(rows) == 5


def test_predict_writes_masks_of_each_input_size(photo_pack, predictions):
    inputs = sorted((photo_pack / "Imgs").iterdir())
    assert {path.suffix for path in inputs} == {".jpg", ".png", ".bmp", ".webp"}
    for path in inputs:
        source = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(predictions / "photos_base" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == source.shape[:2], path.name
    modes = {path.stem: cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED) for path in inputs}
    assert modes["camera"].dtype == np.uint16 and modes["coffee"].shape[2] == 4 and modes["rocket"].ndim == 2


def test_predict_binary_masks_and_overlays(run_dir, photo_pack, predictions, tmp_path):
    assert run_main("predict", "--checkpoint", run_dir / "best_model.pth", "--input", photo_pack / "Imgs",
                    "--output", tmp_path, "--weights", "base", "--tta", "flip", "--binary", "--overlay") == 0
    for probability_path in sorted((predictions / "photos_base").glob("*.png")):
        binary = cv2.imread(str(tmp_path / probability_path.name), cv2.IMREAD_GRAYSCALE)
        probability = cv2.imread(str(probability_path), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(binary, np.where(probability > 127, 255, 0))  # eval's IoU threshold
        overlay = cv2.imread(str(tmp_path / "overlay" / f"{probability_path.stem}.jpg"))
        assert overlay.shape == (*binary.shape, 3)


def test_ema_weights_of_a_checkpoint_without_ema_is_a_clear_error(run_dir, synthetic_set, tmp_path, capsys):
    payload = torch.load(run_dir / "last.pth", weights_only=True)
    del payload["trainer"]["callbacks"]["weight_ema"]["shadow"]
    torch.save(payload, tmp_path / "no_ema.pth")
    for command in (["eval", "--dataset-path", synthetic_set], ["predict", "--input", synthetic_set / "Test" / "Image",
                                                                 "--output", tmp_path / "out"]):
        assert run_main(*command, "--checkpoint", tmp_path / "no_ema.pth", "--weights", "ema") == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("error: ") and "no EMA weights" in error and "--weights base" in error
    assert not (tmp_path / "out").exists()


def test_missing_dataset_is_a_clear_error(run_dir, tmp_path, capsys):
    assert run_main("eval", "--checkpoint", run_dir / "best_model.pth", "--dataset-path", tmp_path / "nope") == 2
    assert "not found" in capsys.readouterr().err


def test_skip_unpaired_scores_the_complete_pairs(run_dir, photo_pack, tmp_path, capsys):
    pack = tmp_path / "camo"
    shutil.copytree(photo_pack, pack)
    for name in ("camourflage_01180", "camourflage_01181"):  # CAMO ships 2 masks without images
        shutil.copy(pack / "GT" / "cat.png", pack / "GT" / f"{name}.png")
    common = ["eval", "--checkpoint", run_dir / "best_model.pth", "--weights", "base"]
    assert run_main(*common, "--dataset-path", pack) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: 2 of 8 masks") and "--skip-unpaired" in error
    assert run_main(*common, "--dataset-path", pack, "--skip-unpaired", "--output", tmp_path / "skip.json") == 0
    assert f"Skipped 2 masks without images and 0 images without masks in {pack} (--skip-unpaired)" \
        in capsys.readouterr().err
    assert run_main(*common, "--dataset-path", photo_pack, "--output", tmp_path / "full.json") == 0
    skipped, full = (json.loads((tmp_path / f"{name}.json").read_text())["results"] for name in ("skip", "full"))
    assert skipped["camo"] == full["photos"]


def test_eval_refuses_a_mask_with_swapped_sides(run_dir, photo_pack, tmp_path, capsys):
    pack = tmp_path / "pack"
    shutil.copytree(photo_pack, pack)
    mask = cv2.imread(str(pack / "GT" / "cat.png"), cv2.IMREAD_GRAYSCALE)
    save(pack / "GT" / "cat.png", np.ascontiguousarray(mask.T))  # 173x263 for a 263x173 image
    assert run_main("eval", "--checkpoint", run_dir / "best_model.pth", "--weights", "base",
                    "--dataset-path", pack) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(pack / "GT" / "cat.png") in error and "the mask is 173x263 but its image is 263x173" in error


def test_train_wrote_the_report_and_preview_images(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    figures = sorted(path.name for path in (run_dir / "report").glob("*.png"))
    assert figures == sorted(["loss.png", "val_iou.png", "lr.png", "gradient_gain.png", "expert_usage.png"])
    events = EventAccumulator(str(run_dir / "runs"), size_guidance={"images": 0})
    events.Reload()
    previews = events.Images("val/preview")
    assert len(previews) == 2  # one per epoch: 4 rows x (image | GT | base | EMA) tiles of 48 px + 2 px gaps
    assert (previews[-1].width, previews[-1].height) == (4 * 50 + 2, 4 * 50 + 2)


def test_report_command_redraws_and_skips_missing_data(run_dir, tmp_path, capsys):
    for figure in (run_dir / "report").glob("*.png"):
        figure.unlink()
    assert run_main("report", "--checkpoint-dir", run_dir) == 0
    assert len(list((run_dir / "report").glob("*.png"))) == 5
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_iou": 0.3}) + "\n")
    assert run_main("report", "--checkpoint-dir", tmp_path) == 0
    assert [path.name for path in (tmp_path / "report").glob("*.png")] == ["val_iou.png"]
    assert "skipped loss.png" in capsys.readouterr().err


def test_flip_tta_is_flip_equivariant_and_scales_keep_the_size(run_dir):
    from engine.commands.predictor import load_predictors

    image = np.random.default_rng(0).integers(0, 256, (45, 71, 3), dtype=np.uint8)
    flip = load_predictors(run_dir / "best_model.pth", "base", torch.device("cpu"), "flip")["base"]
    assert np.allclose(flip.predict(image)[:, ::-1], flip.predict(np.ascontiguousarray(image[:, ::-1])), atol=1e-5)
    scaled = load_predictors(run_dir / "best_model.pth", "ema", torch.device("cpu"), "flip-scale")["ema"]
    assert len(scaled.views()) == 6
    probabilities = scaled.predict(image, output_size=(30, 20))
    assert probabilities.shape == (30, 20) and probabilities.min() >= 0 and probabilities.max() <= 1
