"""Reliability classes of the CLI contract (issue 17): every number checked, worker failures that
never hang, one live run per folder, a resume that notices a changed dataset, saves that survive
full disks and impatient signals, and one error boundary for the user's environment."""
import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train_ultimate
from engine.config import NUMBER_RANGES, TrainConfig
from tests.cli.in_process import assert_refused, run_cli, run_main, snapshot

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--backbone", "test_convnext", "--no-pretrained", "--num-experts", "3", "--decoder-channels", "16",
        "--img-size", "48", "--batch-size", "4", "--epochs", "2", "--stage1-epochs", "1", "--progress", "off"]
pytestmark = pytest.mark.timeout(300)


def write_dataset(root: Path, count: int = 8, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for split in ("Train", "Test"):
        (root / split / "Image").mkdir(parents=True, exist_ok=True)
        (root / split / "GT_Object").mkdir(parents=True, exist_ok=True)
        for index in range(count if split == "Train" else 2):
            stem = f"COD10K-CAM-1-Aquatic-1-Fish-{split}{index}"
            cv2.imwrite(str(root / split / "Image" / f"{stem}.png"), rng.integers(0, 255, (size, size, 3), np.uint8))
            mask = np.zeros((size, size), np.uint8)
            mask[8:30, 10:32] = 255
            cv2.imwrite(str(root / split / "GT_Object" / f"{stem}.png"), mask)
    return root


def corrupt_png_body(path: Path) -> None:
    """Keep the header (the pre-training checks pass) and break the pixel data (decoding fails)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes(200)
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- numbers
NUMERIC_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if "int" in str(f.type) or "float" in str(f.type)]
BAD_VALUES = ("nan", "inf", "-1", "0", "1e12")


def test_every_numeric_setting_has_a_range():
    assert sorted(NUMBER_RANGES) == sorted(NUMERIC_FIELDS)


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_numeric_flags_refuse_nan_inf_negative_zero_and_huge_in_one_line(name, tmp_path):
    is_int = "int" in str(TrainConfig.__dataclass_fields__[name].type)
    for text in BAD_VALUES:
        value = float(text)
        text = str(int(value)) if is_int and math.isfinite(value) else text
        result = run_cli("train", "--dry-run", "--checkpoint-dir", tmp_path / "run", f"--{name.replace('_', '-')}", text)
        parsable = math.isfinite(value) or not is_int
        accepted = parsable and value in NUMBER_RANGES[name]
        if accepted and name == "top_k":
            accepted = value <= TrainConfig.num_experts
        if accepted and name in ("stage1_epochs",):
            accepted = value <= TrainConfig.epochs
        if accepted and name == "min_lr":
            accepted = value <= min(TrainConfig.lr, TrainConfig.stage2_lr)
        if accepted:
            assert result.returncode == 0, (name, text, result.stderr)
        else:
            assert_refused(result, name.replace("_", "-"))
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"


@pytest.mark.parametrize("flags, words", [
    (["--seed", str(2**64)], ["--seed", "[0, 4294967295]"]),
    (["--lr", "1e-4", "--stage2-lr", "1e-3", "--min-lr", "5e-4"], ["--min-lr", "must not exceed"]),
    (["--warmup-epochs", "inf"], ["--warmup-epochs", "finite"]),
    (["--img-size", "100000"], ["--img-size", "4096"]),
    (["--weight-decay", "inf"], ["--weight-decay"]),
    (["--backbone-lr-scale", "inf"], ["--backbone-lr-scale"]),
])
def test_the_reported_numbers(flags, words, tmp_path):
    assert_refused(run_cli("train", "--dry-run", "--checkpoint-dir", tmp_path / "run", *flags), *words)


def test_yaml_infinity_for_an_integer_is_one_line(tmp_path):
    config = tmp_path / "inf.yaml"
    config.write_text("epochs: .inf\n")
    assert_refused(run_cli("train", "--dry-run", "--config", config), "--epochs")


@pytest.mark.parametrize("content, words", [(bytes(range(256)) * 4, ["UTF-8"]), (b"- a\n- b\n", ["mapping"])])
def test_unreadable_yaml_is_one_line(content, words, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    assert_refused(run_cli("train", "--dry-run", "--config", config), *words)


def test_folders_where_files_belong_are_named(tmp_path):
    assert_refused(run_cli("train", "--dry-run", "--config", tmp_path), "is a folder")
    assert_refused(run_cli("train", "--dry-run", "--checkpoint-dir", tmp_path / "run",
                                  "--resume-from", tmp_path), "is a folder", "last.pth")
    cache_file = tmp_path / "cache"
    cache_file.write_text("keep")
    assert_refused(run_cli("train", "--dry-run", "--checkpoint-dir", tmp_path / "run",
                                  "--cache", "disk", "--cache-dir", cache_file), "--cache-dir", "is a file")
    assert cache_file.read_text() == "keep"


# ----------------------------------------------------------------------------- workers
def _train_subprocess(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "train_ultimate.py"), "train", *TINY, *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", ["--persistent-workers", "--no-persistent-workers"])
def test_a_bad_file_in_a_worker_ends_the_run_in_one_line_without_hanging(persistent, tmp_path):
    data = write_dataset(tmp_path / "data")
    corrupt_png_body(data / "Train" / "Image" / "COD10K-CAM-1-Aquatic-1-Fish-Train3.png")
    before = snapshot(data)
    # The subprocess timeout is the hang detector: before the fix the process never exited.
    result = _train_subprocess("--dataset-path", data, "--val-fraction", "0", "--num-workers", "2", persistent,
                               "--checkpoint-dir", tmp_path / "run")
    assert_refused(result, "Fish-Train3.png", "--skip-bad-samples")
    assert "worker process" not in result.stderr.split("error:")[-1]
    assert snapshot(data) == before


def test_skip_bad_samples_skips_a_file_that_fails_in_a_worker(tmp_path):
    data = write_dataset(tmp_path / "data")
    corrupt_png_body(data / "Train" / "Image" / "COD10K-CAM-1-Aquatic-1-Fish-Train3.png")
    # a subprocess: the workers' warnings reach the real stderr, not the test's in-process capture
    result = _train_subprocess("--dataset-path", data, "--val-fraction", "0", "--num-workers", "2",
                               "--skip-bad-samples", "--epochs", "1", "--checkpoint-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "Skipped a bad sample" in result.stderr and "Fish-Train3.png" in result.stderr


def test_a_text_file_named_like_an_image_is_caught_before_training(tmp_path):
    data = write_dataset(tmp_path / "data")
    (data / "Train" / "Image" / "COD10K-CAM-1-Aquatic-1-Fish-Train2.png").write_text("not an image")
    result = run_cli("train", *TINY, "--dataset-path", data, "--num-workers", "2", "--skip-bad-samples",
                     "--epochs", "1", "--checkpoint-dir", tmp_path / "run")
    assert result.returncode == 0 and "no known image header" in result.stderr, result.stderr


# ----------------------------------------------------------------------------- one run per folder
def test_a_second_live_run_in_the_same_folder_is_refused(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from engine.checkpoint.lock import RunLock
        with RunLock({str(folder)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli("train", *TINY, "--synthetic-train-size", "8", "--checkpoint-dir", folder)
        assert_refused(result, "another run is writing", f"pid {holder.pid}")
        assert_refused(run_cli("train", "--dry-run", "--checkpoint-dir", folder), "another run is writing")
        assert not list(folder.glob("*.pth")) and not (folder / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The killed holder left its lock behind: the next run takes it over with a warning.
    assert (folder / ".run.lock").exists()
    result = run_cli("train", *TINY, "--synthetic-train-size", "8", "--epochs", "1", "--checkpoint-dir", folder)
    assert result.returncode == 0, result.stderr
    assert "Taking over the lock" in result.stderr and "no longer running" in result.stderr
    assert not (folder / ".run.lock").exists(), "the lock is released at the end of the run"


# ----------------------------------------------------------------------------- changed dataset
def _mid_epoch_checkpoint(data: Path, folder: Path) -> None:
    """A tiny run on ``data`` stopped by a signal after its first optimizer step of epoch 1."""
    from engine.build import build_trainer
    from engine.config import build_config
    from tests.conftest import TINY_SETTINGS
    from tests.engine.training.test_resume import StopAtStep

    config = build_config({}, dict(TINY_SETTINGS, dataset_path=str(data), checkpoint_dir=str(folder), batch_size=2,
                                   epochs=2, val_fraction=0.0))
    trainer = build_trainer(config)
    trainer.add_callback(StopAtStep(1))
    trainer.fit()
    assert trainer.batch_in_epoch == 1


def test_resume_after_the_dataset_changed_mid_epoch_is_refused_or_restarts_the_epoch(tmp_path):
    data = write_dataset(tmp_path / "data")
    folder = tmp_path / "run"
    _mid_epoch_checkpoint(data, folder)
    for stale in sorted((data / "Train" / "Image").iterdir())[:5]:  # the set shrinks below the saved position
        stale.unlink()
        (data / "Train" / "GT_Object" / stale.name).unlink()
    before = snapshot(folder)
    flags = ["--resume-from", folder / "last.pth", "--checkpoint-dir", folder, "--dataset-path", data]
    result = run_cli("train", *flags)
    assert_refused(result, "training set changed", "8 -> 3", "--restart-epoch")
    assert snapshot(folder) == before, "a refused resume changes nothing"
    result = run_cli("train", *flags, "--restart-epoch")
    assert result.returncode == 0, result.stderr
    assert "restarts from its first batch" in result.stderr
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]


def test_a_changed_dataset_at_an_epoch_boundary_is_reported_and_continues(tmp_path):
    data = write_dataset(tmp_path / "data")
    folder = tmp_path / "run"
    common = ["--dataset-path", data, "--checkpoint-dir", folder, "--val-fraction", "0", "--num-workers", "0"]
    assert run_main("train", *TINY, *common, "--stop-after-epochs", "1") == 0
    (data / "Train" / "Image" / "COD10K-CAM-1-Aquatic-1-Fish-Train0.png").unlink()
    (data / "Train" / "GT_Object" / "COD10K-CAM-1-Aquatic-1-Fish-Train0.png").unlink()
    result = run_cli("train", *common, "--resume-from", "auto")
    assert result.returncode == 0, result.stderr
    assert "training set changed" in result.stderr and "8 -> 7 training images" in result.stderr


# ----------------------------------------------------------------------------- saves
def test_a_full_disk_during_the_save_is_one_line_and_takes_the_metrics_row_back(tmp_path, monkeypatch):
    import engine.checkpoint.files as files

    folder = tmp_path / "run"
    real_save = torch.save

    def save_until_epoch_two(payload, stream, *args, **kwargs):
        if payload["trainer"]["progress"]["epoch"] >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(payload, stream, *args, **kwargs)

    monkeypatch.setattr(files.torch, "save", save_until_epoch_two)
    result = run_cli("train", *TINY, "--synthetic-train-size", "8", "--num-workers", "0", "--checkpoint-dir", folder)
    monkeypatch.undo()
    assert_refused(result, "disk is full")
    assert str(folder) in result.stderr, "the line names the checkpoint that could not be written"
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1], "no row for the epoch whose checkpoint failed"
    assert torch.load(folder / "last.pth", weights_only=True)["trainer"]["progress"]["epoch"] == 1
    assert not list(folder.glob(".tmp-ckpt-*")), "the partial file is removed"


def test_a_second_signal_during_a_save_exits_after_the_file_is_complete(tmp_path, monkeypatch):
    import engine.checkpoint.files as files
    from engine.callbacks.signals import SignalStopCallback
    from tests.engine.fakes import fake_trainer

    trainer = fake_trainer(request_stop=lambda reason, exit_code: None)
    callback = SignalStopCallback()
    callback.on_train_start(trainer)
    real_save = torch.save

    def save_interrupted_twice(payload, stream, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the first asks for a clean stop
        os.kill(os.getpid(), signal.SIGTERM)  # the second, mid-write, asks to leave at once
        return real_save(payload, stream, *args, **kwargs)

    monkeypatch.setattr(files.torch, "save", save_interrupted_twice)
    try:
        with pytest.raises(SystemExit) as stopped:
            files.atomic_save({"weights": torch.arange(1000)}, tmp_path / "last.pth")
    finally:
        callback.teardown(trainer)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert torch.equal(torch.load(tmp_path / "last.pth", weights_only=True)["weights"], torch.arange(1000))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


# ----------------------------------------------------------------------------- the error boundary
def test_a_worker_error_keeps_only_the_original_message():
    from torch._utils import ExceptionWrapper

    from data.layouts import DatasetError
    from engine.runtime.errors import one_line

    try:
        raise DatasetError("Cannot read a.jpg: it is not a decodable image. Re-download or delete the file.")
    except DatasetError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DatasetError) as raised:
        wrapper.reraise()  # what the DataLoader does in the main process
    assert "Traceback" in str(raised.value)
    assert one_line(raised.value) == "Cannot read a.jpg: it is not a decodable image. Re-download or delete the file."


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "not writable"),
                                         (errno.EACCES, "not writable"), (errno.ENOENT, "does not exist"),
                                         (errno.EIO, "Input/output error")])
@pytest.mark.parametrize("command", ["train", "synth", "eval", "predict", "report", "export"])
def test_every_command_turns_os_errors_into_one_line(command, code, words, monkeypatch, tmp_path):
    def broken(args):
        raise OSError(code, os.strerror(code), str(tmp_path / "out"))

    monkeypatch.setattr(train_ultimate, f"run_{command}", broken)
    argv = {"train": ["train"], "synth": ["synth", "--output", "x"], "eval": ["eval", "--dataset-path", "x"],
            "predict": ["predict", "--checkpoint", "c", "--input", "i", "--output", "o"],
            "report": ["report", "--checkpoint-dir", "x"],
            "export": ["export", "--checkpoint", "c", "--output", "o"]}[command]
    assert_refused(run_cli(*argv), words, str(tmp_path / "out"))


def test_a_bug_keeps_its_traceback(monkeypatch):
    def buggy(args):
        raise KeyError("internal")

    monkeypatch.setattr(train_ultimate, "run_report", buggy)
    with pytest.raises(KeyError):
        train_ultimate.main(["report", "--checkpoint-dir", "x"])


def test_a_surviving_ddp_rank_ends_on_one_line_and_other_runtime_errors_keep_their_traceback(monkeypatch, capsys):
    def peer_gone(args):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:22446")

    monkeypatch.setattr(train_ultimate, "run_train", peer_gone)
    assert train_ultimate.main(["train"]) == 2
    assert capsys.readouterr().err.startswith("error: another rank of this torchrun job stopped")

    def buggy(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(train_ultimate, "run_train", buggy)
    with pytest.raises(RuntimeError, match="mat1"):
        train_ultimate.main(["train"])


def test_report_reads_a_damaged_metrics_file(tmp_path, tiny_run_dir):
    """A line of bytes that are not UTF-8 (a write cut short) and a config.yaml that is not a mapping:
    the bad line is named and skipped, and every figure of the intact run is drawn from the rest."""
    import shutil

    from engine.commands.report import read_metrics

    intact, folder = tmp_path / "intact", tmp_path / "run"
    for copy in (intact, folder):
        shutil.copytree(tiny_run_dir, copy)
        shutil.rmtree(copy / "report", ignore_errors=True)  # train's own report: each copy draws its own
    records = read_metrics(intact / "metrics.jsonl")
    assert [record["epoch"] for record in records] == [1, 2]  # the tiny run's two epochs
    with open(folder / "metrics.jsonl", "ab") as stream:
        stream.write(b"\xff\xfe not utf-8\n")
    (folder / "config.yaml").write_text("- a\n- b\n")
    assert read_metrics(folder / "metrics.jsonl") == records
    expected = run_cli("report", "--checkpoint-dir", intact)
    result = run_cli("report", "--checkpoint-dir", folder)
    assert expected.returncode == result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"metrics.jsonl line {len(records) + 1} is not JSON" in result.stderr, result.stderr
    figures = sorted(path.name for path in (intact / "report").glob("*.png"))
    assert "val_iou.png" in figures and sorted(path.name for path in (folder / "report").glob("*.png")) == figures


@pytest.mark.parametrize("side", ["8", "18446744073709551616"])
def test_inference_img_size_out_of_range_is_one_line_and_touches_nothing(side, tmp_path, tiny_run_dir):
    """eval/predict/export take the training range of --img-size; a huge side used to reach OpenCV's
    resize as a traceback after predict had already rewritten its output folder's manifest."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((40, 40, 3), 90, np.uint8))
    output = tmp_path / "masks"
    checkpoint = tiny_run_dir / "best_model.pth"
    assert run_cli("predict", "--checkpoint", checkpoint, "--input", images, "--output", output).returncode == 0
    before = snapshot(tmp_path)
    commands = [
        ["predict", "--checkpoint", checkpoint, "--input", images, "--output", output, "--overwrite"],
        ["eval", "--checkpoint", checkpoint, "--dataset-path", tmp_path],
        ["export", "--checkpoint", checkpoint, "--output", tmp_path / "model.safetensors"],
    ]
    for command in commands:
        assert_refused(run_cli(*command, "--img-size", side), "--img-size", "[32, 4096]")
    assert snapshot(tmp_path) == before
