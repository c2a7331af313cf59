"""torchrun / DDP support: process-group set-up, model wrapping and cross-rank agreement.

Launched with ``torchrun --nproc_per_node N train_ultimate.py train ...`` (or
``python -m torch.distributed.run``): nccl on GPUs, gloo on the CPU. Rank 0 alone logs, writes
TensorBoard and saves; every rank holds identical weights and an identical weight EMA.

When one rank fails, the job ends instead of hanging: the failing rank leaves the process group
without a barrier (``shutdown(failed=True)``) and exits with its one-line error. Measured with gloo:
a collective waiting for a rank whose process is gone raises "Connection closed by peer" within
0.1 s; torchrun then sends the remaining ranks SIGTERM and, 30 s later, SIGKILL. A rank blocked
inside a C++ collective does not run Python signal handlers, so SIGTERM alone does not end it; the
broken collective, SIGKILL or ``COLLECTIVE_TIMEOUT`` (a rank that hangs without dying) does.
"""
from __future__ import annotations

import gc
import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

# How long a collective waits for a silent rank (torch's NCCL default; gloo's own is 30 min). The
# longest legitimate wait is rank 0's checkpoint save while the others wait in the next all-reduce:
# seconds, not minutes.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)

# DDP's per-forward buffer broadcast is off (``sync_buffers`` does it once per update). torch 2.14
# renamed the switch and warns on every rank about the old name; older torch (Kaggle's) has only it.
_NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False}
                           if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                           else {"broadcast_buffers": False})

# With gradient_as_bucket_view, DDP compares each gradient's strides with its bucket view's and warns
# on a mismatch, also where the two differ only in the stride of a size-1 dimension (a depthwise
# conv's (C, 1, k, k) weight), which is the same layout. Where layouts really differ it copies the
# gradient into the bucket, as it does without bucket views: nothing to act on.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

# What a collective raises on a rank whose peer process is gone: gloo's words (a plain RuntimeError)
# and the DistError family of newer torch (NCCL, the TCP store).
_PEER_LOST_WORDS = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing")

PEER_LOST_MESSAGE = ("another rank of this torchrun job stopped, so this rank's collective broke: that rank's own "
                     "error line above says why; fix it, then resume with --resume-from auto")


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
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return DistributedContext(rank, local_rank, world_size)


def wrap_model(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """DDP over the parameters that currently require grad.

    DDP registers its gradient hooks at construction, so the Trainer re-wraps whenever the set of
    trainable parameters changes (stage change, progressive unfreezing). Buffers are synced once per
    optimizer step by ``sync_buffers`` instead of before every forward.

    A DDP wrapper and its reducer form a reference cycle that only a cyclic GC pass frees, and the
    reducer holds the gradient buckets (one copy of the trainable gradients): callers drop their
    reference to the wrapper being replaced first, and the collection here frees it before the new
    wrapper allocates its own buckets. The gradients are views into the buckets
    (``gradient_as_bucket_view``), so a rank holds one gradient copy, not two.
    """
    if context.enabled:
        gc.collect()
    if not context.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True,
                                               **_NO_FORWARD_BUFFER_SYNC)


def agree(values: torch.Tensor, context: DistributedContext) -> List[int]:
    """Per entry of the ``(K,)`` integer (or bool) tensor ``values``: its largest value over the ranks.

    One all-reduce (MAX) under DDP and one host read in all, whatever ``K``. The Trainer folds every
    decision of an update into one call (loss or gradients non-finite, stop requested, the exit code
    a stop asks for), so no rank acts on a decision another rank has not taken: a flag true on one
    rank is true on all.
    """
    values = values.to(torch.int32)  # gloo and NCCL both reduce int32 with MAX
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [int(value) for value in values.tolist()]


BufferRef = Tuple[nn.Module, str]  # (owning module, attribute name): looked up at each sync


def changing_buffers(model: nn.Module) -> Dict[str, BufferRef]:
    """The buffers a training forward can change, by qualified name.

    Those are the floating-point buffers of modules in train mode: BatchNorm statistics of the
    trainable encoder stages, the router's dispatch EMA. Frozen stages and ``--freeze-encoder-bn``
    BatchNorm layers are in eval mode and keep theirs; integer buffers are constants or counters
    that every rank advances alike (``num_batches_tracked``). Modes change with the stage and with
    progressive unfreezing, so the Trainer asks again whenever it (re-)wraps the model.
    """
    found: Dict[str, BufferRef] = {}
    seen = set()
    for module_name, module in model.named_modules():
        if not module.training:
            continue
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and id(buffer) not in seen:
                seen.add(id(buffer))
                found[f"{module_name}.{name}" if module_name else name] = (module, name)
    return found


@torch.no_grad()
def sync_buffers(buffers: Sequence[BufferRef], context: DistributedContext) -> None:
    """Copy rank 0's values of ``buffers`` (from :func:`changing_buffers`) to every rank.

    Forward passes update buffers from each rank's own shard; syncing once per optimizer step keeps
    the models, and so the weight EMA, identical across ranks. One broadcast per dtype and device
    (usually one in all), not one per buffer: a BatchNorm backbone has hundreds.
    """
    if not context.enabled or not buffers:
        return
    groups: Dict[tuple, List[torch.Tensor]] = {}
    for module, name in buffers:
        tensor = module._buffers[name]  # now, not at listing time: a module may have replaced it
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for tensors in groups.values():
        flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
        dist.broadcast(flat, src=0)
        if context.is_main:
            continue  # rank 0 sent its own values
        for tensor, values in zip(tensors, flat.split([tensor.numel() for tensor in tensors])):
            tensor.copy_(values.view_as(tensor))


def shutdown(context: DistributedContext, failed: bool = False) -> None:
    """Leave the process group.

    After a clean run every rank first waits for the others: a rank leaving while another still
    saves makes gloo abort the job. After a failure (``failed``) there is no barrier: the other
    ranks may be waiting in a collective this rank will never join, so a barrier would wait for
    ``COLLECTIVE_TIMEOUT``; leaving at once breaks their collectives and lets torchrun end the job.

    The process group must be freed here, not at interpreter exit: a DDP wrapper's reducer keeps it
    (and gloo's worker threads) alive past ``destroy_process_group``, and gloo threads still running
    while the interpreter finalises abort the rank now and then ("terminate called without an active
    exception", exit 134 after a finished run). So the Trainer drops its wrapper when ``fit`` ends.
    """
    if not (context.enabled and dist.is_initialized()):
        return
    if not failed:
        dist.barrier()
        dist.destroy_process_group()
        return
    try:
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if dist.get_backend() == "nccl" and abort is not None:
            abort()  # NCCL's destroy may wait for the other ranks (pytorch#119250); abort does not wait
        else:
            dist.destroy_process_group()  # gloo: local; closing the sockets fails the peers' collectives
    except Exception as error:  # noqa: BLE001 - the original error is what the user must see
        logger.debug("Leaving the process group after a failure: %s", error)


def is_peer_lost(error: BaseException) -> bool:
    """True for the error a surviving rank gets when another rank's process ends mid-collective."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error) for words in _PEER_LOST_WORDS)
