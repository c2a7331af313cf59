"""Where the suite finds the real material it tests on, outside the repository.

The 996 CAMO-train photographs live beside the checkout (``../shared/data/camo-train``) on the
project's machines and CI; ``CAMO_TRAIN_DIR`` points elsewhere. A user's machine has neither, and
the tests that need them skip there, with this reason; under CI such a skip is a failure
(``tests/skip_policy.py``).
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_CAMO_TRAIN = Path(os.environ.get("CAMO_TRAIN_DIR") or ROOT.parent / "shared" / "data" / "camo-train")
REAL_CAMO_MISSING = (f"real CAMO photographs not found at {REAL_CAMO_TRAIN} "
                     f"(set CAMO_TRAIN_DIR to a folder holding Train/Image and Train/GT_Object)")


def real_camo_present() -> bool:
    return (REAL_CAMO_TRAIN / "Train" / "Image").is_dir()
