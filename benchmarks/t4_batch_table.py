"""Estimate: the largest stage-2 batch that fits a 16 GB T4, per backbone, image size and
``--grad-checkpointing``, from ``engine.commands.memory_estimate`` (fake CUDA, fp16 autocast as ``--amp auto``
gives a T4). No GPU is used; the README table comes from here and stays labelled an estimate until a
T4 has measured it.

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
from engine.commands.memory_estimate import GIB, estimate_training_memory  # noqa: E402

T4_BUDGET = 15.0 * GIB  # 15.1 GiB usable on a 16 GB T4, less some room for the CUDA context
BACKBONES = {"edgenext_base": dict(num_experts=7), "tf_efficientnet_lite0": dict(num_experts=7)}
SIZES = (352, 384, 416)


def stage2_total(backbone: str, img_size: int, batch: int, checkpointing: bool) -> int:
    config = build_config({}, dict(BACKBONES[backbone], backbone=backbone, img_size=img_size, batch_size=batch,
                                   stage2_batch_size=batch, epochs=2, stage1_epochs=1, pretrained=False,
                                   grad_checkpointing=checkpointing))
    return estimate_training_memory(config, torch.float16)[-1].total


def largest_batch(backbone: str, img_size: int, checkpointing: bool) -> int:
    one, two = (stage2_total(backbone, img_size, batch, checkpointing) for batch in (1, 2))
    per_image = two - one
    batch = max(0, int((T4_BUDGET - (one - per_image)) // per_image))
    while batch > 0 and stage2_total(backbone, img_size, batch, checkpointing) > T4_BUDGET:
        batch -= 1  # the line is a model of the estimate; the estimate itself decides
    return batch


def main() -> dict:
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    table = {f"{backbone}@{size}{'+ckpt' if ckpt else ''}": largest_batch(backbone, size, ckpt)
             for backbone in BACKBONES for size in SIZES for ckpt in (False, True)}
    return {"benchmark": "t4_batch_table", "estimate": True, "budget_gib": T4_BUDGET / GIB, "amp": "fp16",
            "stage": 2, "largest_batch": table, "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    print(json.dumps(main()))
