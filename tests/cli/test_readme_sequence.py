"""The README's phase 1 -> plateau -> phase 2 sequence, run as written.

The three commands are read from the README's "Phase 1" to "Phase 2" sections (the next-session
``--continue-from`` command there is tests/cli/test_kaggle_sessions.py's), the Kaggle paths are
pointed at a temporary folder, a tiny synthetic COD10K-v3 root and a tiny CAMO download, and tiny
settings are appended (argparse keeps the last value of a flag). Each phase must start from the
previous phase's best weights and re-plan its schedule as the README says.
"""
import re
import shlex
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import has_ema, progress, saved_weights
from tests.cli.in_process import run_cli
from tests.data.test_multiple_roots import camo_download

ROOT = Path(__file__).resolve().parents[2]
DATASET = "/kaggle/input/cod10k-dataset/COD10K-v3"
CAMO = "/kaggle/input/camo-dataset/CAMO-V.1.0-CVIU2019"
PHASE1_TINY = ["--backbone", "test_convnext", "--no-pretrained", "--num-experts", "3", "--decoder-channels", "16",
               "--img-size", "48", "--batch-size", "4", "--num-workers", "0", "--epochs", "2", "--stage1-epochs", "1",
               "--lr", "0.001", "--stage2-lr", "0.001", "--val-fraction", "0.25", "--progress", "off"]
pytestmark = pytest.mark.timeout(600)


def readme_commands():
    """The ``python train_ultimate.py train`` commands of the phase sections, in order, but the next session's."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Phase 1"):text.index("### Splitting a long plan")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [shlex.split(block.replace("\\\n", " ")) for block in blocks]
    return [command[3:] for command in commands
            if command[:3] == ["python", "train_ultimate.py", "train"] and "--continue-from" not in command]


def localise(arguments, working: Path, dataset: Path, camo: Path):
    return [argument.replace("/kaggle/working", str(working)).replace(DATASET, str(dataset)).replace(CAMO, str(camo))
            for argument in arguments]


def test_the_documented_sequence_chains_best_weights_and_replans(tmp_path):
    commands = readme_commands()
    assert len(commands) == 3, commands  # phase 1, plateau, phase 2
    dataset = tmp_path / "COD10K-v3"
    assert run_cli("synth", "--output", dataset, "--num-train", "16", "--num-test", "4", "--size", "48").returncode == 0
    camo = camo_download(tmp_path / "CAMO", train=[f"camourflage_0000{i}" for i in range(1, 5)])
    working = tmp_path / "working"
    phase1, plateau, phase2 = (localise(command, working, dataset, camo) for command in commands)

    result = run_cli("train", *phase1, *PHASE1_TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    first_best = working / "checkpoints" / "best_model.pth"

    result = run_cli("train", *plateau, "--epochs", "4", "--num-workers", "0", "--progress", "off")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"continuing the run of {first_best}" in result.stderr
    assert "changed schedule settings" in result.stderr and "stage2-lr: 0.001 -> 0.0001" in result.stderr
    plateau_folder = working / "checkpoints_plateau"
    plateau_best = load_checkpoint(plateau_folder / "best_model.pth")
    assert progress(plateau_best)["epoch"] > progress(load_checkpoint(first_best))["epoch"]
    assert plateau_best["config"]["backbone"] == "test_convnext"  # inherited, not re-typed

    result = run_cli("train", *phase2, "--epochs", "5", "--num-workers", "0", "--progress", "off")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"continuing the run of {plateau_folder / 'best_model.pth'}" in result.stderr  # not the pre-plateau weights
    assert "changed schedule settings" in result.stderr
    assert "the EMA shadow starts from the loaded weights" in result.stderr
    final = load_checkpoint(working / "checkpoints_ema" / "last.pth")
    assert has_ema(final) and final["config"]["stage2_lr"] == pytest.approx(1e-4)
    # phase 2 really trained on from the plateau weights: its first checkpoint differs from them
    assert any(not torch.equal(value, saved_weights(plateau_best)[key]) for key, value in saved_weights(final).items())
