"""benchmarks/t4_batch_table.py: the batch it reports is the largest whose estimate fits the budget."""
import pytest

from benchmarks import t4_batch_table
from engine.commands.memory_estimate import GIB


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_reported_batch_is_the_largest_that_fits(checkpointing, monkeypatch):
    monkeypatch.setattr(t4_batch_table, "T4_BUDGET", 0.5 * GIB)  # small: a small image finds it fast
    batch = t4_batch_table.largest_batch("tf_efficientnet_lite0", 96, checkpointing)
    assert batch >= 1
    assert t4_batch_table.stage2_total("tf_efficientnet_lite0", 96, batch, checkpointing) <= 0.5 * GIB
    assert t4_batch_table.stage2_total("tf_efficientnet_lite0", 96, batch + 1, checkpointing) > 0.5 * GIB
