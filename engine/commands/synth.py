"""``synth``: write the synthetic camouflage set in the COD10K-v3 layout, after checking its settings."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from data.synthetic import write_synthetic_dataset
from engine.commands.safe_outputs import check_synth_output
from engine.config import ConfigError


def write_synthetic_set(output: Path, num_train: int, num_test: int, seed: int, size: int,
                        difficulty: float) -> Dict[str, int]:
    """Check the settings and the output folder (new or empty), then write the scenes.

    Returns:
        The number of images written per split.
    """
    if num_train < 0 or num_test < 0 or size < 32:
        raise ConfigError("--num-train/--num-test must be >= 0 and --size >= 32")
    if not 0 < difficulty <= 1:
        raise ConfigError(f"--difficulty must be in (0, 1] (got {difficulty})")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be in [0, 2^32) (got {seed})")
    if size > 4096 or max(num_train, num_test) > 1_000_000:
        raise ConfigError("--size must be at most 4096 and --num-train/--num-test at most 1000000")
    check_synth_output(Path(output))
    return write_synthetic_dataset(output, num_train, num_test, seed=seed, size=size, difficulty=difficulty)
