"""The README's code that the documents test does not run: the Python API snippet runs verbatim on the
session's tiny run, and the GPU check's commands parse with ``benchmarks/gpu_check.py``'s own parser."""
import re
import shlex
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tiny_run_dir):
    return tiny_run_dir / "best_model.pth"


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


@pytest.mark.usefixtures("single_torch_thread")
def test_readme_python_api_snippet_runs_verbatim(checkpoint, tmp_path, monkeypatch, capsys):
    shutil.copy(checkpoint, tmp_path / "best_model.pth")
    photo = np.random.default_rng(0).integers(0, 256, (37, 52, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "photo.jpg"), photo)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_python_block(), "README.md:Python API", "exec"), namespace)
    assert namespace["prob"].shape == (37, 52) and namespace["mask"].dtype == bool
    assert [probability.shape for probability in namespace["probs"]] == [(37, 52), (19, 26)]
    assert "ema" in capsys.readouterr().out


def test_readme_gpu_check_commands_parse():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("python benchmarks/gpu_check.py")]
    assert lines
    for line in lines:
        gpu_check.parse_args(shlex.split(line, comments=True)[2:])
