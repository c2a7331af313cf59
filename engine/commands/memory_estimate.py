"""An estimate of a training step's peak GPU memory, per stage, measured without a GPU.

The real model and loss run forward on fake CUDA tensors (``engine.runtime.fake_cuda``) under CUDA's
own autocast policy, at the stage's batch size, image size and trainable parameters. What autograd
saves for the backward pass is counted through ``torch.autograd.graph.saved_tensors_hooks``: every
storage once, the parameters themselves left out (they are the weights). Under autocast that
includes the fp16/bf16 copies of the weights. It also includes the decoder's activations, which
stay fp32: CUDA autocast runs GroupNorm and bilinear upsampling in fp32.

    peak ~ weights (fp32) + gradients and AdamW's two moments (fp32, trainable parameters)
           + the weight EMA (fp32) + saved activations + allowance

The allowance covers what the count cannot see: the activation gradients alive during the backward
pass, the cuDNN/cuBLAS workspaces and the caching allocator's rounding and fragmentation. It is
``ALLOWANCE_FRACTION`` of the rest plus ``ALLOWANCE_FIXED``. It is not the CUDA context (about
0.3-0.5 GiB), which ``torch.cuda.max_memory_allocated`` does not count either. Under DDP, each GPU
also holds the gradient buckets (one more copy of the trainable gradients). The figures are an
estimate until ``benchmarks/gpu_check.py`` has measured them on the card.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from engine.config import TrainConfig
from engine.runtime.fake_cuda import FakeCuda, cuda_autocast
from engine.training.losses import SegmentationCriterion
from models import build_model

ALLOWANCE_FRACTION = 0.15
ALLOWANCE_FIXED = 256 * 2**20
GIB = 2**30


@dataclass(frozen=True)
class StageMemory:
    """The estimated peak of one stage's training step, in bytes."""

    stage: int
    batch_size: int
    activations: int
    weights: int
    gradients: int
    optimizer: int
    ema: int

    @property
    def allowance(self) -> int:
        counted = self.activations + self.weights + self.gradients + self.optimizer + self.ema
        return int(counted * ALLOWANCE_FRACTION) + ALLOWANCE_FIXED

    @property
    def total(self) -> int:
        return self.activations + self.weights + self.gradients + self.optimizer + self.ema + self.allowance

    def describe(self) -> str:
        return (f"stage {self.stage} (batch {self.batch_size}): about {self.total / GIB:.1f} GiB peak GPU memory "
                f"(estimate: activations {self.activations / GIB:.2f}, weights {self.weights / GIB:.2f}, "
                f"gradients + AdamW {(self.gradients + self.optimizer) / GIB:.2f}, EMA {self.ema / GIB:.2f}, "
                f"allowance {self.allowance / GIB:.2f} GiB)")


def _storage_key(tensor: torch.Tensor):
    """Identifies the memory a tensor lives in: its address for a real tensor; for a fake one,
    which has none, the storage object (kept alive by the caller, so its id stays unique)."""
    storage = tensor.untyped_storage()
    if isinstance(tensor, torch._subclasses.fake_tensor.FakeTensor):
        return ("fake", id(storage)), storage
    return ("real", storage.data_ptr()), storage


def saved_for_backward(step: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for backward while ``step()`` runs, each storage once.

    Args:
        step: the forward pass and loss (the backward pass is not run).
        exclude: tensors whose memory is counted elsewhere (the parameters).
    """
    counted: Dict[object, int] = {}
    alive = []  # keeps every counted storage alive, so no id is reused while counting

    for tensor in exclude:
        key, storage = _storage_key(tensor)
        counted[key], _ = 0, alive.append(storage)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key, storage = _storage_key(tensor)
        if key not in counted:
            counted[key] = storage.nbytes()
            alive.append(storage)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = step()
    del result
    return sum(counted.values())


def _set_stage(model: nn.Module, stage: int) -> None:
    """Stage 1: the encoder frozen; stage 2 at its peak: everything trainable (progressive unfreezing
    ends there)."""
    model.train()
    model.requires_grad_(True)
    if stage == 1:
        model.encoder.requires_grad_(False)
        model.encoder.eval()


def estimate_stage(model: nn.Module, criterion: nn.Module, stage: int, batch_size: int, img_size: int,
                   amp_dtype: Optional[torch.dtype], use_ema: bool, channels_last: bool = False) -> StageMemory:
    """The estimated peak of one training step of ``model`` (a real module on the CPU)."""
    _set_stage(model, stage)
    parameters = list(model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in parameters)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    with FakeCuda() as cuda:
        fake_model, fake_criterion = cuda.module(model), cuda.module(criterion)
        images, masks = cuda.images(batch_size, img_size, channels_last), cuda.masks(batch_size, img_size)
        autocast = cuda_autocast(amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

        def step():
            with autocast:
                return fake_criterion(fake_model(images), masks)["loss"]

        activations = saved_for_backward(step, exclude=[*fake_model.parameters(), *fake_model.buffers()])
    return StageMemory(stage=stage, batch_size=batch_size, activations=activations, weights=weights + buffers,
                       gradients=trainable, optimizer=2 * trainable, ema=weights + buffers if use_ema else 0)


def estimate_training_memory(config: TrainConfig, amp_dtype: Optional[torch.dtype]) -> List[StageMemory]:
    """One estimate per stage the run trains (the configured batch, image size, AMP dtype and
    gradient checkpointing), from a randomly initialised model: nothing is downloaded."""
    model_config = config.model_config(synthetic=config.dataset_path is None, weights_from_checkpoint=True)
    model = build_model(model_config)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    criterion = SegmentationCriterion(config.moe_loss_weight, config.deep_supervision_weight,
                                      config.loss_normalization, config.side_supervision_weight,
                                      config.loss_normalization_beta)
    stages = [(1, config.batch_size)] if config.stage1_epochs > 0 and not config.skip_stage1 else []
    if config.epochs > config.stage1_epochs or config.skip_stage1:
        stages.append((2, config.resolved_stage2_batch_size))
    return [estimate_stage(model, criterion, stage, batch, config.img_size, amp_dtype, config.use_ema,
                           config.channels_last) for stage, batch in stages]
