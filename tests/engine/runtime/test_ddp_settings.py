"""DDP with settings that leave work unused or uneven: side heads without supervision, fewer
validation images than ranks, BatchNorm statistics under progressive unfreezing.

One 2-rank gloo run covers the three; it failed before the fixes (DDP: "Expected to have finished
reduction in the prior iteration" at the second step; validation: all-reduces of different sizes).
"""
import pytest
import torch

from engine.build import build_trainer
from engine.config import build_config
from engine.runtime.distributed import changing_buffers
from engine.training.unfreeze import apply_unfreezing
from tests.engine.runtime.test_ddp import SETTINGS, train_two_ranks

EDGE_CASES = dict(
    SETTINGS,
    backbone="test_efficientnet",  # BatchNorm in every encoder stage
    side_supervision_weight=0.0,  # the side heads get no gradient
    synthetic_train_size=8,  # 2 optimizer steps per epoch on each rank
    synthetic_val_size=1,  # rank 1 has no validation image
    epochs=3, stage1_epochs=1, progressive_unfreeze=True, unfreeze_interval=1,  # re-wrapped at epochs 2 and 3
)


@pytest.fixture(scope="module")
def edge_ranks(tmp_path_factory):
    """Both ranks' final states (checked identical: weights, BatchNorm statistics, EMA)."""
    overrides = {key: value for key, value in EDGE_CASES.items() if SETTINGS.get(key) != value}
    return train_two_ranks(tmp_path_factory.mktemp("ddp_edge") / "run", **overrides)


@pytest.fixture
def untrained(tmp_path):
    """The same run in one process, before training (same seed: the same initial weights)."""
    return build_trainer(build_config({}, dict(EDGE_CASES, checkpoint_dir=str(tmp_path / "single"))))


@pytest.mark.slow
def test_unsupervised_side_heads_train_several_steps_and_stay_as_built(edge_ranks, untrained):
    rank0, _ = edge_ranks
    assert rank0["global_step"] == 6
    side_heads = [key for key in rank0["model"] if ".side_heads." in key]
    assert side_heads  # still in the weights file
    for key in side_heads:
        assert torch.equal(rank0["model"][key], untrained.unwrapped_model.state_dict()[key]), key


@pytest.mark.slow
def test_batch_norm_statistics_of_unfrozen_stages_change_alike_on_both_ranks(edge_ranks, untrained):
    rank0, _ = edge_ranks
    model = untrained.unwrapped_model
    initial = model.state_dict()
    apply_unfreezing(model, untrained.plan, epoch_index=2)  # the last epoch: the two deepest stages train
    unfrozen = {key for key in changing_buffers(model) if key.endswith("running_mean")}
    changed = {key for key, value in rank0["model"].items()
               if key.endswith("running_mean") and not torch.equal(value, initial[key])}
    assert changed == unfrozen and len(unfrozen) < len([key for key in initial if key.endswith("running_mean")])


@pytest.mark.slow
def test_a_rank_without_validation_images_gets_the_same_metrics(edge_ranks, untrained):
    rank0, rank1 = edge_ranks
    assert rank0["metrics"] == rank1["metrics"]
    assert rank0["image_blind_iou"] == rank1["image_blind_iou"]
    untrained.unwrapped_model.load_state_dict(rank0["model"])
    metrics = untrained.validate(untrained.model)  # one process, the one validation image
    assert metrics.keys() == rank0["metrics"].keys()
    for key, value in metrics.items():
        assert value == pytest.approx(rank0["metrics"][key], rel=1e-5, abs=1e-6), key
    assert untrained.image_blind_iou == pytest.approx(rank0["image_blind_iou"])
