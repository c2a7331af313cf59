"""engine.runtime.distributed without a process group: which buffers a step syncs, how, and how a rank leaves."""
import pytest
import torch
from torch import nn

import engine.runtime.distributed as distributed
from engine.evaluation.mask_prior import ImageBlindBaseline
from engine.evaluation.mask_scores import MetricAccumulator, per_image_scores
from engine.runtime.distributed import DistributedContext, changing_buffers, shutdown, sync_buffers
from engine.training.stages import PlanState, StagePlan
from engine.training.unfreeze import apply_unfreezing
from models import build_model

RANK1 = DistributedContext(rank=1, world_size=2)


def _bn_model(tiny_config, **overrides):
    config = tiny_config(backbone="test_efficientnet", **overrides)  # BatchNorm in every encoder stage
    return build_model(config.model_config(synthetic=True)), StagePlan(config, 12, PlanState.fresh(config))


def _encoder_statistics(model, epoch_index, plan):
    apply_unfreezing(model, plan, epoch_index)
    return {name for name in changing_buffers(model) if name.startswith("encoder.")}


def test_synced_buffers_follow_the_stage_and_frozen_batch_norm(tiny_config):
    model, plan = _bn_model(tiny_config, freeze_encoder_bn=False)
    all_statistics = {name for name, buffer in model.named_buffers()
                      if name.startswith("encoder.") and buffer.is_floating_point()}
    assert _encoder_statistics(model, 0, plan) == set()  # stage 1: the frozen encoder keeps its statistics
    assert _encoder_statistics(model, 1, plan) == all_statistics  # stage 2: every encoder BatchNorm trains
    assert "decoder.router.dispatch_fraction" in changing_buffers(model)
    assert not any(name.endswith("num_batches_tracked") for name in changing_buffers(model))  # same on every rank

    frozen_bn, plan = _bn_model(tiny_config, freeze_encoder_bn=True)
    assert _encoder_statistics(frozen_bn, 1, plan) == set()  # --freeze-encoder-bn: eval mode, nothing to sync


def test_progressive_unfreezing_adds_statistics_stage_by_stage(tiny_config):
    model, plan = _bn_model(tiny_config, freeze_encoder_bn=False, progressive_unfreeze=True, unfreeze_interval=1,
                            epochs=4)
    synced = [_encoder_statistics(model, epoch, plan) for epoch in range(4)]
    assert synced[0] == set() and set() < synced[1] < synced[2] < synced[3]


def test_sync_buffers_sends_one_tensor_per_dtype_and_copies_rank0s_values(monkeypatch):
    model = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm1d(2))
    model[1].register_buffer("scale64", torch.zeros(2, dtype=torch.float64))
    sent = []

    def broadcast(tensor, src):  # rank 0's values: 1, 2, 3, ... in listing order
        assert src == 0
        sent.append((tensor.dtype, tensor.numel()))
        tensor.copy_(torch.arange(1, tensor.numel() + 1, dtype=tensor.dtype))

    monkeypatch.setattr(distributed.dist, "broadcast", broadcast)
    buffers = changing_buffers(model)
    assert list(buffers) == ["0.running_mean", "0.running_var", "1.running_mean", "1.running_var", "1.scale64"]
    sync_buffers(list(buffers.values()), RANK1)
    assert sent == [(torch.float32, 10), (torch.float64, 2)]
    assert model[0].running_var.tolist() == [4.0, 5.0, 6.0] and model[1].running_var.tolist() == [9.0, 10.0]
    assert model[1].scale64.tolist() == [1.0, 2.0]


def test_a_failing_rank_leaves_without_a_barrier(monkeypatch):
    """The other ranks may wait in a collective this rank will never join: a barrier would hang."""
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    shutdown(RANK1, failed=True)
    assert calls == ["destroy"]
    shutdown(RANK1)
    assert calls == ["destroy", "barrier", "destroy"]  # a clean exit waits for the ranks still saving


def test_validation_totals_have_one_layout_with_and_without_images():
    """A rank without validation images joins the same all-reduces, of the same sizes."""
    keys = ("loss", "iou", "dice", "mae")
    empty, seen = MetricAccumulator(torch.device("cpu"), keys), MetricAccumulator(torch.device("cpu"), keys)
    masks = (torch.rand(3, 1, 16, 16) > 0.5).float()
    seen.update(per_image_scores(torch.rand(3, 1, 16, 16), masks), torch.tensor(1.0))
    assert empty.totals().shape == seen.totals().shape and not empty.totals().any()


def test_image_blind_baseline_of_a_rank_without_masks_joins_both_all_reduces():
    masks = (torch.rand(3, 1, 16, 16) > 0.5).float()
    other_rank = []  # what a rank with masks contributes to each all-reduce

    def alone(totals):
        other_rank.append(totals.clone())
        return totals

    baseline = ImageBlindBaseline()
    baseline.update(masks)
    expected = baseline.compute(alone)
    received = []

    def with_the_other_rank(totals):
        received.append(totals.shape)
        return totals + other_rank[len(received) - 1]

    assert ImageBlindBaseline(torch.device("cpu")).compute(with_the_other_rank) == expected
    assert received == [tensor.shape for tensor in other_rank] and len(received) == 2
    assert torch.isnan(torch.tensor(ImageBlindBaseline().compute()))  # no mask anywhere
