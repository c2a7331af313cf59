"""The lag table of guides/EMA_GUIDE.md equals what a run states at start-up (and ``--dry-run`` prints):
``engine.monitors.averaging_windows``, the one place the window and lag of an EMA are computed."""
import re
from pathlib import Path

import pytest

from engine.config import build_config
from engine.monitors.averaging_windows import averaging_facts
from engine.training.schedule import steps_per_epoch
from engine.training.stages import PlanState, StagePlan
from tests.conftest import TINY_SETTINGS

GUIDE = Path(__file__).resolve().parents[2] / "guides" / "EMA_GUIDE.md"
PHASE1 = dict(images=3040 - 304, batch_size=8, accumulation_steps=1)  # 10 % of 3040 held out, batch 8
PHASE2 = dict(images=3040 - 304, batch_size=1, accumulation_steps=4)  # batch 1 x accumulation 4
AT_400 = dict(images=3200, batch_size=8, accumulation_steps=1)


def table_rows():
    rows = []
    for line in GUIDE.read_text().splitlines():
        match = re.match(r"\|\s*(0\.9+)\s*\|\s*(\d+)\s*\|\s*([\d.]+) epochs\s*\|\s*([\d.]+) epochs\s*\|\s*([\d.]+) epochs", line)
        if match:
            rows.append(tuple(float(value) for value in match.groups()))
    return rows


def stated_window_and_lag(decay, images, batch_size, accumulation_steps):
    """``(window, lag in epochs, updates per epoch)`` as the run's weight-EMA start-up line states them."""
    config = build_config({}, dict(TINY_SETTINGS, use_ema=True, ema_decay=decay, batch_size=batch_size,
                                   accumulation_steps=accumulation_steps, epochs=20, stage1_epochs=20))
    facts, _ = averaging_facts(config, StagePlan(config, images, PlanState.fresh(config)))
    line = next(fact for fact in facts if fact.startswith("weight EMA"))
    match = re.search(r"window and lag about (\d+) updates = ([\d.e+-]+) epochs in stage 1 \((\d+) updates/epoch\)",
                      line)
    assert match, line
    return int(match.group(1)), float(match.group(2)), int(match.group(3))


def test_updates_per_epoch_of_the_guide():
    assert steps_per_epoch(3040 - 304, 8, 1) == 342  # phase 1
    assert steps_per_epoch(3040 - 304, 1, 4) == 684  # phase 2


@pytest.mark.parametrize("row", table_rows())
def test_lag_table_row(row):
    """The run prints 3 significant digits, the guide 2 decimals: they agree within both roundings."""
    decay, window, lag_400, lag_phase1, lag_phase2 = row
    for setting, lag, updates in ((AT_400, lag_400, 400), (PHASE1, lag_phase1, 342), (PHASE2, lag_phase2, 684)):
        stated = stated_window_and_lag(decay, **setting)
        assert stated[0] == window and stated[2] == updates
        assert stated[1] == pytest.approx(lag, rel=0.005, abs=0.006), (decay, updates)


def test_table_has_every_decay():
    assert [row[0] for row in table_rows()] == [0.9999, 0.999, 0.99, 0.9]
