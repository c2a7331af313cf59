"""torchrun / DDP support: process-group set-up, model wrapping and cross-rank agreement.

Launched with ``torchrun --nproc_per_node N train_ultimate.py train ...`` (or
``python -m torch.distributed.run``): nccl on GPUs, gloo on the CPU. Rank 0 alone logs, writes
TensorBoard and saves; every rank holds identical weights and an identical weight EMA.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job (``world_size == 1``: no DDP)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistributedContext:
    """Join the process group torchrun describes in the environment (no-op without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank, local_rank, world_size)


def wrap_model(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """DDP over the parameters that currently require grad.

    DDP registers its gradient hooks at construction, so the Trainer re-wraps whenever the set of
    trainable parameters changes (stage change, progressive unfreezing). Buffers are synced once per
    optimizer step by ``sync_buffers`` instead of before every forward.
    """
    if not context.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def any_rank(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (keeps stop decisions in step)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


@torch.no_grad()
def sync_buffers(model: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's buffers (router dispatch EMA, norm statistics) to every rank.

    Forward passes update buffers from each rank's own shard; syncing once per optimizer step keeps
    the models, and so the weight EMA, identical across ranks.
    """
    if not context.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.barrier()  # a rank leaving while another still saves makes gloo abort the job
        dist.destroy_process_group()
