"""The fake-CUDA harness itself: global autocast state, untouched originals, fake inputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from engine.runtime.fake_cuda import FakeCuda, cuda_autocast


def _autocast_state():
    return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_applies_cuda_policy_and_restores_state(dtype):
    before = _autocast_state()
    with FakeCuda() as cuda:
        linear = cuda.module(nn.Linear(4, 3))
        inputs = cuda.empty(2, 4)
        with cuda_autocast(dtype):
            assert _autocast_state() == (True, dtype)
            logits = linear(inputs)
            probabilities = logits.softmax(dim=1)
    # CUDA's policy, not the CPU's: linear in the low dtype, softmax back in float32.
    assert logits.dtype == dtype and logits.device.type == "cuda"
    assert probabilities.dtype == torch.float32
    assert _autocast_state() == before


def test_cuda_autocast_restores_state_after_an_error_and_when_nested():
    before = _autocast_state()
    with pytest.raises(RuntimeError, match="inside"):
        with cuda_autocast(torch.float16):
            with cuda_autocast(torch.bfloat16):
                assert _autocast_state() == (True, torch.bfloat16)
            assert _autocast_state() == (True, torch.float16)
            raise RuntimeError("inside")
    assert _autocast_state() == before
    with pytest.raises(ValueError, match="float32"):
        with cuda_autocast(torch.float32):
            pass
    assert _autocast_state() == before


def test_module_is_a_fake_copy_and_the_original_is_untouched():
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 4))
    original[0].requires_grad_(False)
    original.eval()
    before = {name: tensor.clone() for name, tensor in original.state_dict().items()}
    with FakeCuda() as cuda:
        fake = cuda.module(original)
    assert all(is_fake(tensor) for tensor in [*fake.parameters(), *fake.buffers()])
    assert not any(is_fake(tensor) for tensor in [*original.parameters(), *original.buffers()])
    assert all(t.device.type == "cuda" for t in [*fake.parameters(), *fake.buffers()])
    assert [p.requires_grad for p in fake.parameters()] == [p.requires_grad for p in original.parameters()]
    assert [isinstance(p, nn.Parameter) for p in fake.parameters()] == [True] * len(list(original.parameters()))
    assert not fake.training and fake[1].num_batches_tracked.dtype == torch.long
    for name, tensor in original.state_dict().items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, before[name]), name


def test_shared_parameters_stay_shared():
    original = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    original[1].weight = original[0].weight  # tied, as in weight-tied heads
    with FakeCuda() as cuda:
        fake = cuda.module(original)
    assert fake[0].weight is fake[1].weight
    assert len(list(fake.parameters())) == 1


def test_values_are_not_available():
    # What the harness cannot check: anything that needs a value (the forward pass and loss need none).
    with FakeCuda() as cuda:
        images = cuda.images(2, 16)
        assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
        assert cuda.masks(2, 16).shape == (2, 1, 16, 16)
        with pytest.raises(Exception, match="local_scalar_dense"):
            images.sum().item()
