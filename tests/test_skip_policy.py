"""Under CI a skip fails unless opt-in; elsewhere skips stay skips; every skip is listed with its reason."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = '''
import pytest

def test_needs_a_resource():
    pytest.skip("the resource is missing")

@pytest.mark.skipif(True, reason="opt-in: runs with LONG=1")
def test_opt_in():
    pass

def test_passes():
    pass
'''


def run_sample(tmp_path, ci):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env.update(PYTHONPATH=str(ROOT), **({"CI": ci} if ci is not None else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.skip_policy",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_under_ci_a_skip_fails_with_its_reason_and_opt_in_stays_a_skip(tmp_path):
    result = run_sample(tmp_path, "1")
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 1 skipped" in result.stdout
    assert "skipped under CI, which is meant to have what this test needs: the resource is missing" in result.stdout
    assert "skip policy: 1 skipped (skips fail under CI unless opt-in)" in result.stdout
    assert "skipped test_sample.py::test_opt_in: opt-in: runs with LONG=1" in result.stdout


def test_outside_ci_skips_are_skips_and_listed(tmp_path):
    for ci in (None, "", "0"):
        result = run_sample(tmp_path, ci)
        assert result.returncode == 0, result.stdout
        assert "1 passed, 2 skipped" in result.stdout
        assert "skip policy: 2 skipped (skips allowed (CI unset))" in result.stdout
        assert "skipped test_sample.py::test_needs_a_resource: the resource is missing" in result.stdout
