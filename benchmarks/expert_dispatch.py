"""Benchmark: a CPU training step with the MoE experts run on their routed images only, vs every expert
on every image (``MoEDecoder.sparse_on_cpu`` off), in the same process.

The default model (EfficientNet-Lite0 encoder, 7 experts, top-k 3, the default decoder) at 192 px and batch 8,
as in the field table (docs/BENCHMARKS.md): forward + loss + backward, the encoder trainable (stage 2).
The two are interleaved so machine noise hits both alike. Prints one JSON line with the median step
of each, ``ratio`` = routed / dense (goal < 1.0), and the largest difference of the two mixtures and of
their gradients (the same arithmetic in another order: ~1e-6).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from engine.config import build_config  # noqa: E402
from engine.training.losses import build_criterion  # noqa: E402
from models.factory import build_model  # noqa: E402


def build_pair(backbone: str, img_size: int):
    """The default model twice (same weights): routed and dense dispatch, and its loss."""
    config = build_config({}, dict(backbone=backbone, pretrained=False, img_size=img_size))
    routed = build_model(config.model_config(synthetic=True))
    dense = copy.deepcopy(routed)
    dense.decoder.sparse_on_cpu = False
    return routed.train(), dense.train(), build_criterion(config), config


def train_step(model, criterion, images, masks, seed: int):
    """One forward + loss + backward with the router noise drawn from ``seed``; returns the mixture."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    output = model(images)
    criterion(output, masks)["loss"].backward()
    return output


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    routed, dense, criterion, config = build_pair(args.backbone, args.img_size)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    masks = (torch.rand(args.batch_size, 1, args.img_size, args.img_size) > 0.5).float()
    mixture_gap = (train_step(routed, criterion, images, masks, 1).logits
                   - train_step(dense, criterion, images, masks, 1).logits).abs().max().item()
    gradient_gap = max((a.grad - b.grad).abs().max().item() for a, b in zip(routed.parameters(), dense.parameters())
                       if a.grad is not None)
    times = {"routed": [], "dense": []}
    for repeat in range(args.repeats):
        for name, model in (("routed", routed), ("dense", dense)):
            started = time.perf_counter()
            train_step(model, criterion, images, masks, repeat + 2)
            times[name].append(time.perf_counter() - started)
    routed_s, dense_s = statistics.median(times["routed"]), statistics.median(times["dense"])
    result = {
        "benchmark": "expert_dispatch", "device": "cpu", "threads": torch.get_num_threads(), "backbone": args.backbone,
        "img_size": args.img_size, "batch_size": args.batch_size, "num_experts": config.num_experts,
        "top_k": config.top_k, "routed_step_s": round(routed_s, 4), "dense_step_s": round(dense_s, 4),
        "ratio": round(routed_s / dense_s, 3), "max_logit_difference": mixture_gap,
        "max_gradient_difference": gradient_gap, "goal": "ratio < 1.0 with the same logits and gradients",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
