"""On the CPU each expert runs on its routed images only: the same logits and gradients as every expert
on every image (``MoEDecoder.sparse_on_cpu`` off), so the same optimizer step: an idle expert's zero
gradient moves AdamW's moments and weight decay as it does densely."""
from __future__ import annotations

import copy

import pytest
import torch

from models import ModelConfig, build_model


def _pair(**overrides):
    """One model twice, same weights: routed dispatch (the CPU default) and dense."""
    settings = dict(backbone="test_efficientnet", num_experts=7, top_k=1, decoder_channels=16, pretrained=False)
    torch.manual_seed(0)
    routed = build_model(ModelConfig(**{**settings, **overrides})).train()
    dense = copy.deepcopy(routed)
    dense.decoder.sparse_on_cpu = False
    return routed, dense


def _step(model, images, seed=1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same router noise for both
    output = model(images)
    (output.logits.square().mean() + output.balance_loss).backward()
    return output


def _images_per_expert(model):
    """Batch size each expert's forward receives, appended as the experts run."""
    seen = {index: [] for index in range(len(model.decoder.experts))}
    for index, expert in enumerate(model.decoder.experts):
        expert.register_forward_pre_hook(lambda module, inputs, index=index: seen[index].append(inputs[0].shape[0]))
    return seen


def test_each_expert_sees_only_its_routed_images_and_the_result_is_the_dense_one():
    routed, dense = _pair()
    images = torch.randn(3, 3, 64, 64)
    seen = _images_per_expert(routed)
    routed_output, dense_output = _step(routed, images), _step(dense, images)
    chosen = (routed_output.routing_weights != 0).sum(dim=0).tolist()
    assert [sum(seen[index]) for index in seen] == chosen  # top-1 of 7 on 3 images: at least 4 experts idle
    assert sum(count == 0 for count in chosen) >= 4
    torch.testing.assert_close(routed_output.logits, dense_output.logits, rtol=0, atol=1e-6)
    for (name, a), b in zip(routed.named_parameters(), dense.parameters()):
        assert (a.grad is None) == (b.grad is None), name  # an idle expert still gets its (zero) gradient
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    for index in (index for index, count in enumerate(chosen) if count == 0):
        assert all(p.grad is not None and not p.grad.any() for p in routed.decoder.experts[index].parameters())


@pytest.mark.parametrize("overrides, routed_runs", [
    (dict(deep_supervision=True), False),  # per-expert logits need every expert on every image
    (dict(), True),
])
def test_deep_supervision_keeps_every_expert_on_every_image(overrides, routed_runs):
    routed, _ = _pair(**overrides)
    seen = _images_per_expert(routed)
    _step(routed, torch.randn(3, 3, 64, 64))
    assert all(sizes == [3] for sizes in seen.values()) is not routed_runs


def test_with_gradient_checkpointing_routed_dispatch_gives_the_same_gradients():
    routed, dense = _pair(top_k=2)
    routed.decoder.grad_checkpointing = True
    images = torch.randn(4, 3, 64, 64)
    routed_output, dense_output = _step(routed, images), _step(dense, images)
    torch.testing.assert_close(routed_output.logits, dense_output.logits, rtol=0, atol=1e-6)
    for (name, a), b in zip(routed.named_parameters(), dense.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
