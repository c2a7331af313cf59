"""The lag table of guides/EMA_GUIDE.md equals what the repo's own code computes."""
import re
from pathlib import Path

import pytest

from engine.callbacks.weight_ema import averaging_window, lag_in_epochs
from engine.training.schedule import steps_per_epoch

GUIDE = Path(__file__).resolve().parents[2] / "guides" / "EMA_GUIDE.md"


def table_rows():
    rows = []
    for line in GUIDE.read_text().splitlines():
        match = re.match(r"\|\s*(0\.9+)\s*\|\s*(\d+)\s*\|\s*([\d.]+) epochs\s*\|\s*([\d.]+) epochs\s*\|\s*([\d.]+) epochs", line)
        if match:
            rows.append(tuple(float(value) for value in match.groups()))
    return rows


def test_updates_per_epoch_of_the_guide():
    assert steps_per_epoch(3040 - 304, 8, 1) == 342  # phase 1: 10 % of 3040 held out, batch 8
    assert steps_per_epoch(3040 - 304, 1, 4) == 684  # phase 2: batch 1 x accumulation 4


@pytest.mark.parametrize("row", table_rows())
def test_lag_table_row(row):
    decay, window, lag_400, lag_phase1, lag_phase2 = row
    assert round(averaging_window(decay)) == window
    assert lag_in_epochs(decay, 400) == pytest.approx(lag_400, abs=1e-3)
    assert lag_in_epochs(decay, 342) == pytest.approx(lag_phase1, abs=0.006)
    assert lag_in_epochs(decay, 684) == pytest.approx(lag_phase2, abs=0.006)


def test_table_has_every_decay():
    assert [row[0] for row in table_rows()] == [0.9999, 0.999, 0.99, 0.9]
