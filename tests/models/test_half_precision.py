"""The decoder keeps half precision under CUDA autocast (models/layers.py: GroupNorm, resize_to(keep_dtype)).

CUDA autocast runs ``group_norm`` and bilinear upsampling in fp32; left to it, every decoder
``ConvNormAct`` would save fp32 activations for backward. Counted on fake CUDA tensors
(``engine.runtime.fake_cuda``) by dtype: what autograd saves inside the decoder and the head, each
storage once, the parameters left out. On the CPU and in fp32 the layers are torch's own.
"""
from __future__ import annotations

import collections
import contextlib
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn

from engine.config import TrainConfig
from engine.runtime.fake_cuda import FakeCuda, cuda_autocast
from engine.training.losses import SegmentationCriterion
from models import build_model
from models.config import ModelConfig
from models.layers import GroupNorm, group_norm, resize_to

HALF = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
DECODER_SCOPES = ("decoder", "head")


def saved_bytes(model: nn.Module, criterion: nn.Module, batch: int, side: int,
                dtype: Optional[torch.dtype]) -> Dict[Tuple[str, torch.dtype], int]:
    """Bytes autograd saves for backward in one fake-CUDA forward + loss, by (scope, dtype).

    A storage counts once, for the scope (encoder, decoder, head, other) that saved it first.
    """
    scope: List[str] = ["other"]
    counted: Dict[int, Tuple[str, torch.dtype, int]] = {}
    alive = []  # keeps counted storages alive, so no id is reused while counting
    with FakeCuda() as cuda:
        fake_model, fake_criterion = cuda.module(model), cuda.module(criterion)
        for name in ("encoder", "decoder", "head"):
            module = getattr(fake_model, name)
            module.register_forward_pre_hook(lambda _module, _args, name=name: scope.append(name))
            module.register_forward_hook(lambda _module, _args, _output: scope.pop() and None)
        parameters = {id(t.untyped_storage()) for t in [*fake_model.parameters(), *fake_model.buffers()]}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if id(storage) not in parameters and id(storage) not in counted:
                counted[id(storage)] = (scope[-1], tensor.dtype, storage.nbytes())
                alive.append(storage)
            return tensor

        images, masks = cuda.images(batch, side), cuda.masks(batch, side)
        autocast = cuda_autocast(dtype) if dtype is not None else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
            fake_criterion(fake_model(images), masks)["loss"]
    table: Dict[Tuple[str, torch.dtype], int] = collections.defaultdict(int)
    for name, tensor_dtype, nbytes in counted.values():
        table[(name, tensor_dtype)] += nbytes
    return dict(table)


def total(table, scopes=None, dtypes=None) -> int:
    return sum(nbytes for (name, dtype), nbytes in table.items()
               if (scopes is None or name in scopes) and (dtypes is None or dtype in dtypes))


def describe(table) -> str:
    return ", ".join(f"{name} {str(dtype)[6:]} {nbytes / 2**20:.1f} MiB" for (name, dtype), nbytes in sorted(
        table.items(), key=lambda item: (item[0][0], str(item[0][1]))))


@pytest.mark.parametrize("dtype", HALF)
def test_group_norm_and_resize_keep_half_precision_under_cuda_autocast(dtype):
    norm = group_norm(16)
    assert isinstance(norm, GroupNorm) and isinstance(norm, nn.GroupNorm)  # same parameters, same state dict
    with FakeCuda() as cuda:
        fake_norm, half, single = cuda.module(norm), cuda.empty(2, 16, 6, 6, dtype=dtype), cuda.empty(2, 16, 6, 6)
        with cuda_autocast(dtype):
            assert fake_norm(half).dtype == dtype
            assert fake_norm(single).dtype == torch.float32  # an fp32 input: autocast's own fp32
            assert resize_to(half, (12, 12), keep_dtype=True).dtype == dtype
            assert resize_to(half, (12, 12)).dtype == torch.float32  # the default, for logits: autocast's fp32
        assert fake_norm(single).dtype == torch.float32  # no autocast: nn.GroupNorm


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16, torch.float16])
def test_group_norm_is_torchs_own_on_the_cpu(autocast_dtype):
    torch.manual_seed(0)
    norm = group_norm(16)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    reference = nn.GroupNorm(norm.num_groups, 16)
    reference.load_state_dict(norm.state_dict())
    inputs = torch.randn(2, 16, 5, 7) * 3 + 1
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        ours, theirs = norm(inputs.to(autocast_dtype or torch.float32)), reference(
            inputs.to(autocast_dtype or torch.float32))
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def _tiny_model(backbone: str) -> nn.Module:
    return build_model(ModelConfig(backbone=backbone, pretrained=False, num_experts=7, top_k=2, decoder_channels=16,
                                   deep_supervision=True)).train()


def _criterion() -> SegmentationCriterion:
    return SegmentationCriterion(moe_loss_weight=0.01, deep_supervision_weight=0.5, normalization="none",
                                 side_supervision_weight=0.5).train()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("backbone", ["test_convnext", "test_efficientnet"])
def test_the_decoder_saves_half_precision_activations(backbone, dtype):
    # Every expert kind, deep supervision and the detail refinement (test_efficientnet's stride-2 level).
    model, criterion = _tiny_model(backbone), _criterion()
    single, half = (saved_bytes(model, criterion, 2, 64, amp) for amp in (None, dtype))
    decoder_half = total(half, DECODER_SCOPES)
    # What stays fp32 on purpose: the frequency expert's FFT (float32 and complex64) and the router's
    # (B, E) logits: 0.06-0.08 of the bytes. With GroupNorm in fp32, as autocast has it: 0.52-0.59.
    kept_single = total(half, DECODER_SCOPES, (torch.float32, torch.complex64))
    assert kept_single <= 0.15 * decoder_half, describe(half)
    # Half the bytes of the fp32 run, up to the FFT and the fp16 copies of the encoder's fp32 maps
    # the decoder's convs take in. Measured: 0.54-0.58 (GroupNorm in fp32, as autocast has it: 0.91).
    assert decoder_half <= 0.6 * total(single, DECODER_SCOPES), (describe(single), describe(half))


@pytest.fixture(scope="module")
def default_recipe():
    """The model and criterion of ``TrainConfig()``'s defaults (edgenext_base, 7 experts, 384 px, batch 8)."""
    config = TrainConfig()
    criterion = SegmentationCriterion(config.moe_loss_weight, config.deep_supervision_weight,
                                      config.loss_normalization, config.side_supervision_weight,
                                      config.loss_normalization_beta)
    return config, build_model(config.model_config(synthetic=True)).train(), criterion.train()


def test_the_default_recipe_saves_half_in_fp16_at_stage_two(default_recipe):
    """Stage 2 at its peak: everything trainable. Fake CUDA, 384 px, batch 8, edgenext_base, saved
    for backward in fp32 -> in fp16 with GroupNorm and upsampling in fp32 (autocast's policy) -> in
    fp16 now:

        decoder + head   0.97 GiB -> 0.80 GiB (0.83x) -> 0.53 GiB (0.55x)
        the whole step   3.16 GiB -> 2.08 GiB (0.66x) -> 1.81 GiB (0.57x)

    By dtype, decoder + head in fp16: before 0.35 GiB fp16, 0.43 GiB fp32, 0.02 GiB complex64; now
    0.49 GiB fp16, 0.02 GiB fp32 and 0.02 GiB complex64 (both the FFT expert's). What is left above
    0.5x: the encoder's fp32 (0.23 GiB; edgenext's LayerNorms run in fp32 under autocast: 0.57x for
    the encoder), the loss (fp32 on purpose) and the FFT expert.
    """
    config, model, criterion = default_recipe
    model.requires_grad_(True)
    single, half = (saved_bytes(model, criterion, config.batch_size, config.img_size, amp)
                    for amp in (None, torch.float16))
    assert total(half, DECODER_SCOPES) <= 0.6 * total(single, DECODER_SCOPES), (describe(single), describe(half))
    assert total(half) <= 0.6 * total(single), (describe(single), describe(half))
