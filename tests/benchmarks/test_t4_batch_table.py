"""benchmarks/t4_batch_table.py: the batch it reports is the largest whose estimate fits a T4's budget
(capacity less the CUDA context and cuDNN workspace allowances), and two ranks (NCCL) leave less room."""
import pytest

from benchmarks import t4_batch_table
from engine.commands import memory_estimate
from engine.commands.memory_estimate import CUDA_CONTEXT, CUDNN_WORKSPACE, GIB, NCCL_PER_RANK, budget

ROOM = 0.6 * GIB  # a small budget: a small image finds its largest batch fast


@pytest.fixture
def small_card(monkeypatch):
    """A card whose budget for a 2-rank run leaves ``ROOM`` once NCCL's allowance is taken."""
    monkeypatch.setattr(memory_estimate, "T4_CAPACITY", int(CUDA_CONTEXT + CUDNN_WORKSPACE + NCCL_PER_RANK + ROOM))
    return budget(memory_estimate.T4_CAPACITY)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_reported_batch_is_the_largest_that_fits(checkpointing, small_card):
    batch = t4_batch_table.largest_batch("tf_efficientnet_lite0", 96, checkpointing)
    assert batch >= 1
    assert t4_batch_table.stage2_total("tf_efficientnet_lite0", 96, batch, checkpointing) <= small_card
    assert t4_batch_table.stage2_total("tf_efficientnet_lite0", 96, batch + 1, checkpointing) > small_card


def test_two_ranks_fit_a_smaller_batch_than_one_by_nccls_allowance(small_card):
    one, two = (t4_batch_table.largest_batch("tf_efficientnet_lite0", 96, False, ranks) for ranks in (1, 2))
    assert t4_batch_table.WORLD_SIZE == 2  # the table is for Kaggle's two T4s
    assert 1 <= two < one
    # one rank fills the budget with the bytes two ranks give to NCCL: about NCCL_PER_RANK / per image more
    per_image = (t4_batch_table.stage2_total("tf_efficientnet_lite0", 96, 2, False, 1)
                 - t4_batch_table.stage2_total("tf_efficientnet_lite0", 96, 1, False, 1))
    assert abs((one - two) - NCCL_PER_RANK / per_image) <= 1.5
    assert t4_batch_table.stage2_total("tf_efficientnet_lite0", 96, one, False, 1) <= small_card
    assert t4_batch_table.stage2_total("tf_efficientnet_lite0", 96, one, False, 2) > small_card
