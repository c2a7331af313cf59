"""``train`` (and ``--dry-run``) on a dataset path that is not a root: one line naming the root found near
it, in the words of where the path came from (the flag, the YAML key of ``--config``, a resumed run's config)."""
import shutil

import pytest

from tests.cli.in_process import assert_refused, run_cli
from tests.conftest import tiny_flags
from tests.data.test_multiple_roots import camo_download, cod10k_root

TINY = tiny_flags(synthetic_train_size=None, synthetic_val_size=None, batch_size=2, lr=None, stage2_lr=None,
                  val_fraction=0.25, progress="off")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def kaggle_input(tmp_path):
    cod10k_root(tmp_path / "input" / "cod10k-dataset" / "COD10K-v3",
                stems=[f"COD10K-CAM-1-Aquatic-1-BatFish-{i}" for i in range(4)])
    camo_download(tmp_path / "input" / "camo" / "CAMO-V.1.0-CVIU2019")
    return tmp_path / "input"


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_parent_folder_given_by_flag_names_the_root_inside(kaggle_input, tmp_path, dry_run):
    parent = kaggle_input / "cod10k-dataset"
    result = run_cli("train", *TINY, "--dataset-path", parent, "--checkpoint-dir", tmp_path / "ckpt",
                     *(["--dry-run"] if dry_run else []))
    assert_refused(result, "found COD10K-v3/ inside it", f"pass {parent / 'COD10K-v3'} as --dataset-path")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_yaml_path_is_named_as_the_yaml_key(kaggle_input, tmp_path, dry_run):
    images = kaggle_input / "camo" / "CAMO-V.1.0-CVIU2019" / "Images"
    config = tmp_path / "mine.yaml"
    config.write_text(f"dataset_path: {images}\n")
    result = run_cli("train", "--config", config, *TINY, "--checkpoint-dir", tmp_path / "ckpt",
                     *(["--dry-run"] if dry_run else []))
    assert_refused(result, f"pass it as dataset_path in {config}", str(images.parent))
    assert "--dataset-path" not in result.stderr


def test_a_resumed_runs_path_is_named_as_its_checkpoint_config(kaggle_input, tmp_path):
    root = kaggle_input / "cod10k-dataset" / "COD10K-v3"
    folder = tmp_path / "ckpt"
    trained = run_cli("train", *TINY, "--dataset-path", root, "--checkpoint-dir", folder, "--stop-after-epochs", "1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    moved = kaggle_input / "cod10k-dataset" / "nested" / "COD10K-v3"
    moved.parent.mkdir()
    shutil.move(root, moved)  # the dataset attached again, one folder deeper
    result = run_cli("train", "--resume-from", "auto", "--checkpoint-dir", folder)
    assert_refused(result, "the dataset_path stored in the resumed checkpoint's config (override it with "
                   "--dataset-path)", str(moved))
