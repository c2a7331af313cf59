"""A duration needs its unit: ``--time-limit 11.5`` once meant 11.5 seconds (one step, then "Done"),
so a bare number is refused in one line showing the accepted spellings, from a flag or the YAML file."""
import pytest

from tests.cli.in_process import assert_refused, run_cli
from tests.conftest import tiny_flags

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("dry_run", [["--dry-run"], []], ids=["dry-run", "train"])
@pytest.mark.parametrize("bare, spellings", [("11.5", "write 11.5h, 690m or 41400s"),
                                             ("2", "write 2h, 120m or 7200s"),
                                             ("0.25", "write 0.25h, 15m or 900s")])
def test_a_bare_time_limit_is_refused_with_the_spellings(bare, spellings, dry_run, tmp_path):
    folder = tmp_path / "ckpt"
    result = run_cli("train", *tiny_flags(), "--checkpoint-dir", folder, "--time-limit", bare, *dry_run)
    assert_refused(result, f"--time-limit {bare} has no unit", spellings)
    assert not folder.exists()


def test_a_bare_time_limit_in_the_yaml_file_is_refused_too(tmp_path):
    config = tmp_path / "kaggle.yaml"
    config.write_text("time_limit: 11.5\n")  # YAML reads it as a float
    result = run_cli("train", "--config", config, *tiny_flags(), "--checkpoint-dir", tmp_path / "ckpt", "--dry-run")
    assert_refused(result, "11.5 has no unit", "11.5h, 690m or 41400s")


@pytest.mark.parametrize("limit", ["11.5h", "690m", "41400s", " 2 h "])
def test_a_time_limit_with_its_unit_is_accepted(limit, tmp_path):
    result = run_cli("train", *tiny_flags(), "--checkpoint-dir", tmp_path / "ckpt", "--time-limit", limit, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "time_limit:" in result.stdout


def test_a_duration_that_is_no_number_names_the_spellings(tmp_path):
    result = run_cli("train", *tiny_flags(), "--checkpoint-dir", tmp_path / "ckpt", "--time-limit", "11:30",
                     "--dry-run")
    assert_refused(result, "--time-limit '11:30' is not a duration", "11.5h, 90m or 3600s")
