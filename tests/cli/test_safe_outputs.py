"""No command writes over what it reads or over files it did not write (issue 17, data loss)."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.cli.in_process import assert_refused, run_cli, snapshot

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def run_copy(tmp_path, tiny_run_dir):
    folder = tmp_path / "run"
    shutil.copytree(tiny_run_dir, folder)
    return folder


# ----------------------------------------------------------------------------- eval
@pytest.mark.parametrize("target", ["checkpoint", "dataset", "dataset-mask"])
def test_eval_output_never_replaces_an_input(target, run_copy, tiny_test_set, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_test_set, data)
    checkpoint = run_copy / "best_model.pth"
    mask = sorted((data / "Test" / "GT_Object").iterdir())[0]
    output = {"checkpoint": checkpoint, "dataset": data / "scores.json", "dataset-mask": mask}[target]
    before, before_data = snapshot(run_copy), snapshot(data)
    result = run_cli("eval", "--checkpoint", checkpoint, "--dataset-path", data, "--output", output)
    assert_refused(result, "--output")
    assert snapshot(run_copy) == before and snapshot(data) == before_data


def test_eval_writes_json_and_csv_to_distinct_names_and_refuses_foreign_files(run_copy, tiny_test_set, tmp_path):
    checkpoint = run_copy / "best_model.pth"
    flags = ["--checkpoint", checkpoint, "--dataset-path", tiny_test_set]
    assert_refused(run_cli("eval", *flags, "--output", tmp_path / "scores.csv"), ".json", "scores.csv")
    assert not (tmp_path / "scores.csv").exists()

    foreign = tmp_path / "notes.json"
    foreign.write_text(json.dumps({"my": "notes"}))
    assert_refused(run_cli("eval", *flags, "--output", foreign), "was not written by eval")
    assert json.loads(foreign.read_text()) == {"my": "notes"}

    foreign_table = tmp_path / "table.csv"
    foreign_table.write_text("a,b\n1,2\n")
    assert_refused(run_cli("eval", *flags, "--output", tmp_path / "table.json"), "table.csv")
    assert foreign_table.read_text() == "a,b\n1,2\n"

    result = run_cli("eval", *flags, "--output", tmp_path / "scores.json", "--per-image", tmp_path / "rows.csv")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "scores.json").read_text())["results"]
    assert (tmp_path / "scores.csv").read_text().startswith("dataset,method,")
    # a second eval replaces its own files
    assert run_cli("eval", *flags, "--output", tmp_path / "scores.json", "--per-image", tmp_path / "rows.csv").returncode == 0
    assert_refused(run_cli("eval", *flags, "--output", tmp_path / "s.json", "--per-image", tmp_path / "s.csv"),
                   "--per-image")
    assert_refused(run_cli("eval", *flags, "--per-image", foreign_table), "was not written by eval")


# ----------------------------------------------------------------------------- predict
def _images_folder(tmp_path: Path, tiny_test_set: Path, name: str = "photos") -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_test_set / "Test" / "Image", folder)
    return folder


def test_predict_never_writes_over_its_inputs(run_copy, tiny_test_set, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted((tiny_test_set / "Test" / "Image").iterdir())[:2]:  # PNG photos: masks share the name
        cv2.imwrite(str(photos / f"{source.stem}.png"), cv2.imread(str(source)))
    before = snapshot(photos)
    flags = ["--checkpoint", run_copy / "best_model.pth", "--input", photos]
    for extra in ([], ["--overwrite"]):  # replacing an input image is never allowed
        assert_refused(run_cli("predict", *flags, "--output", photos, *extra), "would replace the input image")
    assert snapshot(photos) == before
    jpegs = _images_folder(tmp_path, tiny_test_set, "jpegs")  # masks would not clash, but the folder is the user's
    jpeg_flags = ["--checkpoint", run_copy / "best_model.pth", "--input", jpegs, "--output", jpegs]
    before = snapshot(jpegs)
    assert_refused(run_cli("predict", *jpeg_flags), "holds the input images", "--overwrite")
    assert snapshot(jpegs) == before
    assert run_cli("predict", *jpeg_flags, "--overwrite").returncode == 0
    assert {path for path in snapshot(jpegs) if path.suffix == ".jpg"} == set(before)


def test_predict_refuses_masks_it_did_not_write_unless_overwrite(run_copy, tiny_test_set, tmp_path):
    photos = _images_folder(tmp_path, tiny_test_set)
    masks = tmp_path / "masks"
    masks.mkdir()
    hand_made = masks / f"{sorted(photos.iterdir())[0].stem}.png"
    cv2.imwrite(str(hand_made), np.full((8, 8), 255, np.uint8))
    flags = ["--checkpoint", run_copy / "best_model.pth", "--input", photos, "--output", masks]
    assert_refused(run_cli("predict", *flags), hand_made.name, "--overwrite")
    assert cv2.imread(str(hand_made), cv2.IMREAD_GRAYSCALE).shape == (8, 8)

    other = tmp_path / "fresh"
    assert run_cli("predict", *flags[:-1], other).returncode == 0
    assert run_cli("predict", *flags[:-1], other).returncode == 0, "predict may replace the masks it wrote"
    assert run_cli("predict", *flags, "--overwrite").returncode == 0
    assert cv2.imread(str(hand_made), cv2.IMREAD_GRAYSCALE).shape != (8, 8)


def test_predict_with_nothing_readable_fails_in_one_line(run_copy, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    (photos / "b.png").write_text("not a picture")
    result = run_cli("predict", "--checkpoint", run_copy / "best_model.pth", "--input", photos,
                     "--output", tmp_path / "masks")
    assert_refused(result, "none of the 2 image(s)")
    assert "--skip-bad-samples" not in result.stderr, "predict has no such flag"
    single = run_cli("predict", "--checkpoint", run_copy / "best_model.pth", "--input", photos / "a.jpg",
                     "--output", tmp_path / "masks")
    assert_refused(single, "a.jpg")
    assert "--skip-bad-samples" not in single.stderr


# ----------------------------------------------------------------------------- synth
def test_synth_refuses_a_file_or_a_non_empty_folder(tmp_path, tiny_test_set):
    data = tmp_path / "data"
    shutil.copytree(tiny_test_set, data)
    before = snapshot(data)
    assert_refused(run_cli("synth", "--output", data, "--num-train", "2", "--num-test", "1"), "not empty")
    assert snapshot(data) == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    assert_refused(run_cli("synth", "--output", a_file), "is a file")
    assert a_file.read_text() == "keep"
    assert_refused(run_cli("synth", "--output", tmp_path / "new", "--seed", "-1"), "--seed")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("synth", "--output", empty, "--num-train", "2", "--num-test", "1", "--size", "32").returncode == 0


# ----------------------------------------------------------------------------- export
def test_export_overwrite_replaces_an_earlier_export_and_nothing_else(run_copy, tmp_path):
    checkpoint = run_copy / "best_model.pth"
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes\n")
    earlier = tmp_path / "model.safetensors"
    assert run_cli("export", "--checkpoint", checkpoint, "--output", earlier).returncode == 0
    before = snapshot(tmp_path)
    for target in (run_copy / "last.pth", notes):  # a training checkpoint, a file export did not write
        assert_refused(run_cli("export", "--checkpoint", checkpoint, "--output", target, "--overwrite"),
                       str(target), "not an export")
    assert snapshot(tmp_path) == before
    assert run_cli("export", "--checkpoint", checkpoint, "--output", earlier, "--overwrite", "--half").returncode == 0
    assert earlier.read_bytes() != before[earlier.relative_to(tmp_path)]


def test_export_recognises_its_own_formats_only(model_file_kinds):
    from engine.commands.export import is_export

    assert {name: is_export(path) for name, path in model_file_kinds.items()} == {
        "safetensors export": True, "pt2 export": True, "training checkpoint": False, "checkpoint named .pt2": False,
        "foreign safetensors": False, "text": False, "empty": False, "missing": False, "folder": False}


@pytest.fixture
def model_file_kinds(run_copy, tmp_path):
    from safetensors.torch import save_file

    from engine.api import load_model
    from engine.commands.export import export_model

    model = load_model(run_copy / "best_model.pth", device="cpu")
    kinds = {"safetensors export": tmp_path / "a.safetensors", "pt2 export": tmp_path / "a.pt2",
             "training checkpoint": run_copy / "last.pth", "checkpoint named .pt2": tmp_path / "ckpt.pt2",
             "foreign safetensors": tmp_path / "foreign.safetensors", "text": tmp_path / "notes.txt",
             "empty": tmp_path / "empty.onnx", "missing": tmp_path / "missing.pt2", "folder": tmp_path}
    export_model(model, kinds["safetensors export"], "safetensors")
    export_model(model, kinds["pt2 export"], "pt2")
    shutil.copy(run_copy / "last.pth", kinds["checkpoint named .pt2"])
    save_file({"w": torch.zeros(2)}, str(kinds["foreign safetensors"]))
    kinds["text"].write_text("just text\n")
    kinds["empty"].write_bytes(b"")
    return kinds
