"""``eval`` scoring saved prediction maps, batched eval, its JSON/CSV outputs, and ``export``, through the CLI.

Oracles: pysodmetrics run here on maps this test writes (resized here as PySODEvalToolkit does);
an image-by-image loop over ``Predictor.predict`` for the batched eval.
"""
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import py_sod_metrics
import pytest
import torch

from tests.cli.in_process import run_cli, run_main

METRICS = ("Smeasure", "meanEm", "maxEm", "adpEm", "wFmeasure", "MAE", "IoU", "Dice")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def ground_truths(test_set: Path):
    return sorted((test_set / "Test" / "GT_Object").glob("*.png"))


def write_method(folder: Path, test_set: Path, seed: int, skip=()):
    """Smooth random maps: half at the GT's size as PNG, half at another size (as JPEG for one)."""
    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for index, gt_path in enumerate(ground_truths(test_set)):
        if gt_path.stem in skip:
            continue
        height, width = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE).shape
        size = (width, height) if index % 2 == 0 else (width // 2 + 3, height // 2 + 1)
        noise = generator.random((6, 6)).astype(np.float32)
        prediction = np.clip(cv2.resize(noise, size, interpolation=cv2.INTER_CUBIC) * 255, 0, 255).astype(np.uint8)
        suffix = ".jpg" if index == 1 else ".png"
        assert cv2.imwrite(str(folder / f"{gt_path.stem}{suffix}"), prediction)


def toolbox_scores(method: Path, test_set: Path) -> dict:
    """pysodmetrics on the maps as PySODEvalToolkit reads them, over the GTs that have a map."""
    sm, em, wfm, mae = (py_sod_metrics.Smeasure(), py_sod_metrics.Emeasure(), py_sod_metrics.WeightedFmeasure(),
                        py_sod_metrics.MAE())
    ious = []
    for gt_path in ground_truths(test_set):
        candidates = list(method.glob(f"{gt_path.stem}.*"))
        if not candidates:
            continue
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        prediction = cv2.imread(str(candidates[0]), cv2.IMREAD_GRAYSCALE)
        if prediction.shape != gt.shape:
            prediction = cv2.resize(prediction, dsize=gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
        for metric in (sm, em, wfm, mae):
            metric.step(pred=prediction, gt=gt)
        predicted, target = prediction > 127, gt > 128
        union = (predicted | target).sum()
        ious.append(1.0 if union == 0 else (predicted & target).sum() / union)
    curve = em.get_results()["em"]["curve"]
    return {"Smeasure": sm.get_results()["sm"], "meanEm": curve.mean(), "maxEm": curve.max(),
            "adpEm": em.get_results()["em"]["adp"], "wFmeasure": wfm.get_results()["wfm"],
            "MAE": mae.get_results()["mae"], "IoU": np.mean(ious), "per_image_sm": sm.sms}


def test_eval_scores_maps_of_several_methods_like_the_toolbox(tiny_test_set, tmp_path):
    stems = [path.stem for path in ground_truths(tiny_test_set)]
    write_method(tmp_path / "MethodA", tiny_test_set, seed=1)
    write_method(tmp_path / "MethodB" / "synthetic", tiny_test_set, seed=2, skip={stems[3]})  # per-set sub-folder
    output, per_image = tmp_path / "out" / "scores.json", tmp_path / "out" / "rows.csv"
    result = run_cli("eval", "--predictions", tmp_path / "MethodA", tmp_path / "MethodB", "--dataset-path",
                     tiny_test_set, "--output", output, "--per-image", per_image)
    assert result.returncode == 0, result.stderr
    assert f"1 of 6 images have no map in {tmp_path / 'MethodB' / 'synthetic'} (e.g. {stems[3]})" in result.stderr
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["dataset", "method", "Smeasure"]
    assert [line.split()[:2] for line in table[1:]] == [["synthetic", "MethodA"], ["synthetic", "MethodB"]]
    saved = json.loads(output.read_text())
    for method in ("MethodA", "MethodB"):
        expected = toolbox_scores(tmp_path / method / ("synthetic" if method == "MethodB" else ""), tiny_test_set)
        for metric in METRICS[:-1]:
            assert saved["results"]["synthetic"][method][metric] == pytest.approx(expected[metric], abs=1e-6), metric
    meta = saved["meta"]["datasets"]["synthetic"]
    assert meta["images"] == 6 and meta["scored"] == {"MethodA": 6, "MethodB": 5} and meta["missing"] == {"MethodB": 1}
    assert saved["meta"]["checkpoint"] is None and set(saved["meta"]["predictions"]) == {"MethodA", "MethodB"}
    with open(per_image, newline="") as stream:
        rows = list(csv.DictReader(stream))
    method_a = [row for row in rows if row["method"] == "MethodA"]
    assert [row["image"] for row in method_a] == stems and len(rows) == 11
    expected_sm = toolbox_scores(tmp_path / "MethodA", tiny_test_set)["per_image_sm"]
    assert np.allclose([float(row["Smeasure"]) for row in method_a], expected_sm, atol=1e-6)


def test_eval_needs_a_checkpoint_or_predictions_and_finds_the_set_folder(tiny_test_set, tmp_path):
    result = run_cli("eval", "--dataset-path", tiny_test_set)
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: eval needs --checkpoint FILE, --predictions DIR [DIR ...] or both"
    (tmp_path / "Empty").mkdir()
    result = run_cli("eval", "--predictions", tmp_path / "Empty", "--dataset-path", tiny_test_set)
    error = result.stderr.strip().splitlines()[-1]  # after the INFO line naming the set found
    assert result.returncode == 2 and error.startswith("error: none of the 6 images of synthetic has a map")
    result = run_cli("eval", "--predictions", tmp_path / "Empty", "--dataset-path", tiny_test_set, tiny_test_set)
    assert result.returncode == 2 and "has no sub-folder synthetic/" in result.stderr


def test_batched_eval_with_workers_equals_the_image_by_image_loop(tiny_run_dir, tiny_test_set):
    from data.image_io import read_image, read_mask
    from data.layouts import find_pairs
    from engine.commands.evaluate import evaluate
    from engine.commands.predictor import load_predictors
    from engine.evaluation.cod_metrics import CODMetrics, to_uint8_map

    predictors = load_predictors(tiny_run_dir / "best_model.pth", "both", torch.device("cpu"), "flip")
    batched = evaluate(predictors, [tiny_test_set], batch_size=4, num_workers=2).results["synthetic"]
    for name, predictor in predictors.items():  # eval as it was before batching: one image per forward pass
        reference = CODMetrics()
        for pair in find_pairs(tiny_test_set, "test"):
            ground_truth = read_mask(pair.mask) * np.uint8(255)
            reference.step(to_uint8_map(predictor.predict(read_image(pair.image), ground_truth.shape)), ground_truth)
        # Batched convolutions round differently in the last float bits, which can move a pixel
        # of the uint8 map by one level (~1e-6 on a score); a batching bug moves scores by 1e-2.
        for metric, value in reference.results().items():
            assert batched[name][metric] == pytest.approx(value, abs=1e-5), (name, metric)


def test_eval_json_cites_its_inputs_and_saved_maps_rescore_the_same(tiny_run_dir, tiny_test_set, tmp_path):
    checkpoint = tiny_run_dir / "best_model.pth"
    maps, output = tmp_path / "maps", tmp_path / "eval.json"
    assert run_main("eval", "--checkpoint", checkpoint, "--dataset-path", tiny_test_set, "--weights", "ema",
                    "--tta", "flip", "--batch-size", 3, "--save-maps", maps, "--output", output) == 0
    saved = json.loads(output.read_text())
    meta = saved["meta"]
    assert meta["checkpoint"] == str(checkpoint.resolve()) and meta["weights"] == ["ema"] and meta["tta"] == "flip"
    assert meta["img_size"] == 48 and meta["batch_size"] == 3 and meta["datasets"]["synthetic"]["images"] == 6
    assert meta["project_version"] and set(meta["metrics"]) == set(METRICS)
    written = maps / "ema" / "synthetic"
    assert len(list(written.glob("*.png"))) == 6
    expected = toolbox_scores(written, tiny_test_set)
    for metric in METRICS[:-1]:
        assert saved["results"]["synthetic"]["ema"][metric] == pytest.approx(expected[metric], abs=1e-6), metric
    again = run_cli("eval", "--checkpoint", checkpoint, "--dataset-path", tiny_test_set, "--weights", "ema",
                    "--save-maps", maps)  # never over existing maps
    assert again.returncode == 2 and "already holds files" in again.stderr
    inside = run_cli("eval", "--checkpoint", checkpoint, "--dataset-path", tiny_test_set, "--save-maps",
                     tiny_test_set / "Test" / "maps")
    assert inside.returncode == 2 and "overlaps --dataset-path" in inside.stderr
    assert not (tiny_test_set / "Test" / "maps").exists()


def test_export_cli_writes_safetensors_that_eval_scores_the_same(tiny_run_dir, tiny_test_set, tmp_path):
    checkpoint = tiny_run_dir / "best_model.pth"
    exported = tmp_path / "camo.safetensors"
    before = checkpoint.read_bytes()
    assert run_main("export", "--checkpoint", checkpoint, "--weights", "ema", "--output", exported) == 0
    refused = run_cli("export", "--checkpoint", checkpoint, "--output", checkpoint, "--overwrite")
    assert refused.returncode == 2 and "is the checkpoint being exported" in refused.stderr
    exists = run_cli("export", "--checkpoint", checkpoint, "--output", exported)
    assert exists.returncode == 2 and exists.stderr.strip() == \
        f"error: --output {exported} already exists; choose another file or pass --overwrite"
    assert checkpoint.read_bytes() == before
    assert run_main("export", "--checkpoint", checkpoint, "--weights", "ema", "--half", "--overwrite",
                    "--output", exported) == 0
    results = {}
    for name, source, weights in (("pth", checkpoint, ["--weights", "ema"]), ("st", exported, [])):
        assert run_main("eval", "--checkpoint", source, *weights, "--dataset-path", tiny_test_set,
                        "--output", tmp_path / f"{name}.json") == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["results"]["synthetic"]["ema"]
    for metric in METRICS:
        assert results["st"][metric] == pytest.approx(results["pth"][metric], abs=2e-3), metric


def test_quiet_eval_prints_no_progress_bar(tiny_test_set, tmp_path):
    write_method(tmp_path / "MethodA", tiny_test_set, seed=1)
    result = run_cli("eval", "--predictions", tmp_path / "MethodA", "--dataset-path", tiny_test_set,
                     "--output", tmp_path / "scores.json", "-q")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines()[0].split()[:2] == ["dataset", "method"]  # the table is the result: kept
