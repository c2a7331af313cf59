"""Estimate: the largest stage-2 batch per GPU that fits a 16 GB T4, per backbone, image size and
``--grad-checkpointing``, from ``engine.commands.memory_estimate`` (fake CUDA, fp16 autocast as ``--amp auto``
gives a T4). Kaggle's GPU is two T4s and ``--devices auto`` trains on both, so the table is for 2
ranks: each GPU's budget is the T4's capacity as PyTorch reports it (14.75 GiB) less the CUDA context
and cuDNN/cuBLAS workspace allowances, and each rank also holds NCCL's buffers (an allowance; DDP's
gradient buckets are the gradients already counted). No GPU is used; the README table comes from
here and stays labelled an estimate until a T4 has measured it.

Activations grow linearly with the batch, so each setting is estimated at batch 1 and 2 and the
largest batch under the budget is solved from that line, then checked with one more estimate.
Prints one JSON line.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from engine.config import build_config  # noqa: E402
from engine.commands import memory_estimate  # noqa: E402
from engine.commands.memory_estimate import GIB, budget, estimate_training_memory  # noqa: E402

WORLD_SIZE = 2  # Kaggle's two T4s, both used by --devices auto
BACKBONES = {"edgenext_base": dict(num_experts=7), "tf_efficientnet_lite0": dict(num_experts=7)}
SIZES = (352, 384, 416)


def stage2_total(backbone: str, img_size: int, batch: int, checkpointing: bool, world_size: int = WORLD_SIZE) -> int:
    """Stage 2's estimated need per GPU (``StageMemory.total``) at ``batch`` per rank."""
    config = build_config({}, dict(BACKBONES[backbone], backbone=backbone, img_size=img_size, batch_size=batch,
                                   stage2_batch_size=batch, epochs=2, stage1_epochs=1, pretrained=False,
                                   grad_checkpointing=checkpointing))
    return estimate_training_memory(config, torch.float16, world_size)[-1].total


def largest_batch(backbone: str, img_size: int, checkpointing: bool, world_size: int = WORLD_SIZE) -> int:
    """The largest stage-2 batch per rank whose need fits a T4's budget (0: not even batch 1)."""
    limit = budget(memory_estimate.T4_CAPACITY)
    one, two = (stage2_total(backbone, img_size, batch, checkpointing, world_size) for batch in (1, 2))
    per_image = two - one
    batch = max(0, int((limit - (one - per_image)) // per_image))
    while batch > 0 and stage2_total(backbone, img_size, batch, checkpointing, world_size) > limit:
        batch -= 1  # the line is a model of the estimate; the estimate itself decides
    return batch


def main() -> dict:
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    table = {f"{backbone}@{size}{'+ckpt' if ckpt else ''}": largest_batch(backbone, size, ckpt)
             for backbone in BACKBONES for size in SIZES for ckpt in (False, True)}
    allowances = {"cuda_context": memory_estimate.CUDA_CONTEXT, "cudnn_workspace": memory_estimate.CUDNN_WORKSPACE,
                  "nccl_per_rank": memory_estimate.NCCL_PER_RANK if WORLD_SIZE > 1 else 0}
    capacity = memory_estimate.T4_CAPACITY
    return {"benchmark": "t4_batch_table", "estimate": True, "capacity_gib": round(capacity / GIB, 2),
            "allowances_gib": {name: round(value / GIB, 2) for name, value in allowances.items()},
            "budget_gib": round(budget(capacity) / GIB, 2), "ranks": WORLD_SIZE, "amp": "fp16",
            "stage": 2, "largest_batch_per_gpu": table, "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    print(json.dumps(main()))
