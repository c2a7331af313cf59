"""An estimate of a training step's peak GPU memory, per stage and GPU, measured without a GPU.

The real model and loss run forward on fake CUDA tensors (``engine.runtime.fake_cuda``) under CUDA's
own autocast policy, at the stage's batch size, image size and trainable parameters. What autograd
saves for the backward pass is counted through ``torch.autograd.graph.saved_tensors_hooks``: every
storage once, the parameters themselves left out (they are the weights). Under autocast that
includes the fp16/bf16 copies of the weights; the decoder's GroupNorm and upsampling and the
encoder's LayerNorms keep half precision (``models/layers.py``, ``models/half_layer_norm.py``), the
router, the FFT expert and the loss stay fp32.

    per GPU  =  weights (fp32) + gradients and AdamW's two moments (fp32, trainable parameters)
                + the weight EMA (fp32) + saved activations + slack
                + NCCL allowance (only with several ranks)
    budget   =  the card's capacity - CUDA context allowance - cuDNN/cuBLAS workspace allowance
    fits     =  per GPU <= budget

Each figure not counted is a stated allowance (the constants below, with where each comes from):

- slack, ``SLACK_FRACTION`` of the counted bytes: the activation gradients alive during the backward
  pass and the caching allocator's rounding and fragmentation.
- CUDA context, ``CUDA_CONTEXT``: the driver's context and the kernels loaded into it, outside
  PyTorch's allocator (``max_memory_allocated`` never sees it, nvidia-smi does). 287 MB for a first
  CUDA op with lazy module loading, PyTorch's default since 1.13 (pytorch/pytorch#86509); "around
  400MB" with CUDA >= 11.7 (pytorch/pytorch#109888); a training step loads more cuDNN and cuBLAS
  kernels lazily: 0.5 GiB.
- cuDNN/cuBLAS workspace, ``CUDNN_WORKSPACE``: allocated through PyTorch's allocator when a kernel
  runs. ``engine/build.py`` turns on ``cudnn.benchmark``, which may pick any convolution algorithm
  whose workspace fits the free memory (pytorch/pytorch#49207); cuBLAS takes about 8 MiB per handle
  on a T4 (4 MiB recommended by NVIDIA, PyTorch's default ``:4096:2:16:8``): 0.25 GiB.
- NCCL, ``NCCL_PER_RANK``, with several ranks only: the communicator's buffers, allocated by NCCL
  outside PyTorch's allocator. 544 MB per GPU for a 2-GPU group of A100s over NVLink
  (NVIDIA/nccl#964); NCCL's memory grows with its channels, fewer over a T4 pair's PCIe: 0.5 GiB.
  DDP's gradient buckets are the gradients already counted: the Trainer wraps with
  ``gradient_as_bucket_view=True`` (``engine/runtime/distributed.py``), so each ``.grad`` is a view
  into a bucket and DDP adds no second copy. Unlike one GPU, where ``zero_grad(set_to_none=True)``
  frees them between steps, the buckets stay allocated for the whole run.

``T4_CAPACITY`` is what PyTorch reports for a T4 (``total_memory``, 14.75 GiB; nvidia-smi shows
15,360 MiB). ``benchmarks/gpu_check.py`` prints these figures beside ``max_memory_allocated``,
``max_memory_reserved`` and the memory used outside PyTorch's allocator; until a T4 has run it they
are an estimate.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from data.batch_scale import BatchScale
from engine.config import TrainConfig
from engine.runtime.fake_cuda import FakeCuda, cuda_autocast
from engine.training.losses import build_criterion
from models import build_model

GIB, MIB = 2**30, 2**20
# torch.cuda.get_device_properties(0).total_memory on a Colab/Kaggle T4: 15102 MiB (14.75 GiB, as
# OOM messages print it; other drivers report 15079-15109 MiB)
T4_CAPACITY = 15102 * MIB
SLACK_FRACTION = 0.15
CUDA_CONTEXT = 512 * MIB
CUDNN_WORKSPACE = 256 * MIB
NCCL_PER_RANK = 512 * MIB


def budget(capacity: int = T4_CAPACITY) -> int:
    """What one training step may use of a card of ``capacity`` bytes (as PyTorch reports it): the
    capacity less the CUDA context and cuDNN/cuBLAS workspace allowances."""
    return capacity - CUDA_CONTEXT - CUDNN_WORKSPACE


def describe_budget(capacity: int = T4_CAPACITY) -> str:
    return (f"budget per GPU: {capacity / GIB:.2f} GiB capacity - CUDA context allowance {CUDA_CONTEXT / GIB:.2f} "
            f"- cuDNN/cuBLAS workspace allowance {CUDNN_WORKSPACE / GIB:.2f} = {budget(capacity) / GIB:.2f} GiB")


@dataclass(frozen=True)
class StageMemory:
    """The estimated peak of one stage's training step on one GPU, in bytes; ``world_size`` ranks."""

    stage: int
    batch_size: int
    activations: int
    weights: int
    gradients: int
    optimizer: int
    ema: int
    world_size: int = 1

    @property
    def counted(self) -> int:
        return self.activations + self.weights + self.gradients + self.optimizer + self.ema

    @property
    def slack(self) -> int:
        return int(self.counted * SLACK_FRACTION)

    @property
    def nccl(self) -> int:
        """The NCCL allowance: with several ranks only."""
        return NCCL_PER_RANK if self.world_size > 1 else 0

    @property
    def total(self) -> int:
        """What this step needs on each GPU, set against :func:`budget`."""
        return self.counted + self.slack + self.nccl

    @property
    def allocated(self) -> int:
        """The estimate of ``torch.cuda.max_memory_allocated``: NCCL and the CUDA context allocate
        outside PyTorch's allocator, cuDNN's workspace inside it."""
        return self.counted + self.slack + CUDNN_WORKSPACE

    def fits(self, capacity: int = T4_CAPACITY) -> bool:
        return self.total <= budget(capacity)

    def describe(self, capacity: int = T4_CAPACITY) -> str:
        ranks = (f"; + NCCL allowance {self.nccl / GIB:.2f} GiB ({self.world_size} ranks; DDP's gradient buckets "
                 "are the gradients above)") if self.nccl else ""
        return (f"stage {self.stage} (batch {self.batch_size}{' per GPU' if self.world_size > 1 else ''}): "
                f"about {self.total / GIB:.1f} of {budget(capacity) / GIB:.1f} GiB per GPU, "
                f"{'fits' if self.fits(capacity) else 'does NOT fit'} (estimate: activations "
                f"{self.activations / GIB:.2f}, weights {self.weights / GIB:.2f}, gradients + AdamW "
                f"{(self.gradients + self.optimizer) / GIB:.2f}, EMA {self.ema / GIB:.2f}, slack "
                f"{SLACK_FRACTION:.0%} {self.slack / GIB:.2f} GiB{ranks})")


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
                   amp_dtype: Optional[torch.dtype], use_ema: bool, channels_last: bool = False,
                   world_size: int = 1) -> StageMemory:
    """The estimated peak of one training step of ``model`` (a real module on the CPU), per GPU of
    ``world_size`` ranks (``batch_size`` per rank)."""
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
                       gradients=trainable, optimizer=2 * trainable, ema=weights + buffers if use_ema else 0,
                       world_size=world_size)


def estimate_training_memory(config: TrainConfig, amp_dtype: Optional[torch.dtype],
                             world_size: int = 1) -> List[StageMemory]:
    """One estimate per stage the run trains (the configured batch per rank, the largest training side
    of ``--train-scales``, AMP dtype and gradient checkpointing) on each GPU of ``world_size`` ranks,
    from a randomly initialised model: nothing is downloaded."""
    model_config = config.model_config(synthetic=config.dataset_path is None, weights_from_checkpoint=True)
    model = build_model(model_config)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    criterion = build_criterion(config)
    stages = [(1, config.batch_size)] if config.stage1_epochs > 0 and not config.skip_stage1 else []
    if config.epochs > config.stage1_epochs or config.skip_stage1:
        stages.append((2, config.resolved_stage2_batch_size))
    side = BatchScale(config.img_size, config.train_sides, config.seed).largest_side
    return [estimate_stage(model, criterion, stage, batch, side, amp_dtype, config.use_ema,
                           config.channels_last, world_size) for stage, batch in stages]
