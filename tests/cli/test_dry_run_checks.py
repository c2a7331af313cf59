"""``train --dry-run`` checks what the real run would fail on later: the pretrained weights (cache, or a
download that can happen), each dataset root's images per split, the output folder, the packages the
settings need; it ends with the images, the steps per epoch and a time only where one was measured."""
import pytest

import models.weights
from tests.cli.in_process import assert_refused, run_cli
from tests.conftest import tiny_flags
from tests.data.test_multiple_roots import cod10k_root

pytestmark = pytest.mark.timeout(600)
DATA_FLAGS = tiny_flags(synthetic_train_size=None, synthetic_val_size=None, batch_size=2, lr=None, stage2_lr=None,
                        val_fraction=0.25, progress="off")


@pytest.fixture
def empty_weights_cache(tmp_path, monkeypatch):
    """No weights cached anywhere timm looks, no offline variable, no proxy."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "hf-cache"


def _dry_run(tmp_path, *flags):
    return run_cli("train", *tiny_flags(), "--checkpoint-dir", tmp_path / "ckpt", *flags, "--dry-run")


def test_offline_weights_are_refused_in_one_line(empty_weights_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models.weights, "can_reach", pytest.fail)  # the variable answers: no connection tried
    assert_refused(_dry_run(tmp_path, "--pretrained"), "'test_convnext'", "HF_HUB_OFFLINE", "--pretrained-path",
                   "--no-pretrained")


def test_an_unreachable_weights_host_is_refused_in_one_line(empty_weights_cache, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(models.weights, "can_reach", lambda host, *args, **kwargs: asked.append(host) or False)
    assert_refused(_dry_run(tmp_path, "--pretrained"), "huggingface.co does not answer", "--pretrained-path",
                   "--no-pretrained")
    assert asked == ["huggingface.co"]
    monkeypatch.setattr(models.weights, "can_reach", lambda host, *args, **kwargs: True)
    result = _dry_run(tmp_path, "--pretrained")
    assert result.returncode == 0, result.stderr
    assert "encoder weights: timm's pretrained test_convnext, to be downloaded from huggingface.co" in result.stdout


def test_cached_weights_pass_without_a_connection(empty_weights_cache, tmp_path, monkeypatch):
    repo = empty_weights_cache / "models--timm--test_convnext.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    weights = repo / "snapshots" / "0123abc" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    monkeypatch.setattr(models.weights, "can_reach", pytest.fail)
    result = _dry_run(tmp_path, "--pretrained")
    assert result.returncode == 0, result.stderr
    assert f"in the cache ({weights})" in result.stdout


def test_an_unreadable_pretrained_file_is_refused(tmp_path):
    (tmp_path / "truncated.pth").write_bytes(b"PK\x03\x04 not a whole file")
    assert_refused(_dry_run(tmp_path, "--pretrained-path", tmp_path / "truncated.pth"), "could not read weights",
                   "--no-pretrained")


def test_an_output_folder_that_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = run_cli("train", *tiny_flags(), "--checkpoint-dir", tmp_path / "a-file" / "ckpt", "--dry-run")
    assert_refused(result, "not writable", "a file", "/kaggle/working")


def test_roots_counts_and_summary_without_a_measured_time(tmp_path):
    root = cod10k_root(tmp_path / "COD10K-v3", stems=[f"COD10K-CAM-1-Aquatic-1-BatFish-{i}" for i in range(4)])
    result = run_cli("train", *DATA_FLAGS, "--dataset-path", root, "--checkpoint-dir", tmp_path / "ckpt",
                     "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"  dataset {root} (cod10k-v3 layout): 4 train images, 1 test images" in lines
    assert f"  output folder: {tmp_path / 'ckpt'} (to be made in {tmp_path}, writable," in result.stdout
    assert any(line.startswith("  packages: timm, albumentations") for line in lines)
    assert lines[-4:-1] == ["images found: 3 training images, 1 validation images (25% of Train held out)",
                            "optimizer steps per epoch: stage 1 2, stage 2 2",
                            "time: no estimate (nothing measured yet for this run; each epoch's log line gives its "
                            "seconds)"]
    assert not (tmp_path / "ckpt").exists()


def test_a_resumed_run_estimates_from_its_own_epochs(tmp_path):
    folder = tmp_path / "ckpt"
    trained = run_cli("train", *tiny_flags(epochs=3), "--checkpoint-dir", folder, "--stop-after-epochs", "2")
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = run_cli("train", "--resume-from", "auto", "--checkpoint-dir", folder, "--dry-run")
    assert result.returncode == 0, result.stderr
    time_line = result.stdout.splitlines()[-2]
    assert time_line.startswith("time: about ") and "per stage-2 epoch, the median of this run's last 1 " in time_line
    assert "1 stage-2 epoch(s) left" in time_line
