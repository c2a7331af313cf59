"""Benchmark: training images/s and peak memory of ``edgenext_base`` + MoE at 384 px.

Variants: fp32, AMP, AMP + channels-last, each with and without gradient checkpointing. AMP is
what ``--amp auto`` picks on the GPU (bf16 on Ampere+, fp16 + GradScaler before); the CPU has no
``auto`` AMP, so bf16 autocast is measured there. Every variant runs in a fresh spawned process
so its peak memory is its own: on a GPU the peak of ``torch.cuda.max_memory_allocated``, on the
CPU the peak resident set size (``ru_maxrss``) next to the size before the first step.

Each step is what the Trainer does per optimizer update in stage 2 (everything trainable):
autocast forward, structure + balance loss, (scaled) backward, unscale, clip, AdamW step. Images
are synthetic camouflage scenes, so the router sees realistic inputs. Prints one JSON line.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

IMG_SIZE = 384
BACKBONE = "edgenext_base"
# (batch, warm-up steps, timed steps): a 2-core CPU needs seconds per step at 384 px.
CPU_RUN = (2, 2, 4)
GPU_RUN = (16, 5, 20)
# Every variant runs this many times, in turn, and keeps its best rate: this machine's speed
# drifts over minutes, and a single pass in a fixed order would favour whichever ran last.
ROUNDS = 2
VARIANTS = {  # name -> (amp, channels_last, grad_checkpointing)
    "fp32": (False, False, False),
    "amp": (True, False, False),
    "amp_channels_last": (True, True, False),
    "fp32_grad_ckpt": (False, False, True),
    "amp_channels_last_grad_ckpt": (True, True, True),
}


def measure(variant: str) -> dict:
    """Train ``variant`` for a few steps in this process; returns its rate and peak memory."""
    from data.synthetic import SyntheticCamouflageDataset
    from data.transforms import build_val_transform
    from engine.config import build_config
    from engine.training.losses import SegmentationCriterion
    from engine.training.optim import build_optimizer
    from engine.training.precision import Precision
    from models import build_model

    use_amp, channels_last, grad_checkpointing = VARIANTS[variant]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch_size, warmup, timed = GPU_RUN if device.type == "cuda" else CPU_RUN
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    config = build_config({}, dict(backbone=BACKBONE, pretrained=False, img_size=IMG_SIZE, batch_size=batch_size))
    model = build_model(config.model_config(synthetic=True)).to(device).train()
    model.set_grad_checkpointing(grad_checkpointing)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    criterion = SegmentationCriterion(config.moe_loss_weight).to(device)
    optimizer = build_optimizer(model, config)
    amp_mode = ("auto" if device.type == "cuda" else "bf16") if use_amp else "off"
    precision = Precision.create(amp_mode, device)

    scenes = SyntheticCamouflageDataset(batch_size, size=IMG_SIZE, transform=build_val_transform(IMG_SIZE))
    samples = [scenes[index] for index in range(batch_size)]
    images = torch.stack([s["image"] for s in samples]).to(device, memory_format=memory_format)
    masks = torch.stack([s["mask"] for s in samples]).to(device)

    def step() -> None:
        with precision.autocast():
            losses = criterion(model(images), masks)
        precision.backward(losses["loss"])
        precision.unscale_and_clip(optimizer, model, config.grad_clip)
        precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    idle_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(timed):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"images_per_s": round(batch_size * timed / seconds, 2),
              "precision": str(precision.dtype or torch.float32).replace("torch.", "")}
    if device.type == "cuda":
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    else:
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        result["rss_before_training_mb"] = round(idle_rss_mb)
    return result


def main() -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh process per variant: peaks do not mix
    results = {}
    for _ in range(ROUNDS):
        for variant in VARIANTS:
            with context.Pool(1) as pool:
                result = pool.apply(measure, (variant,))
            if variant not in results or result["images_per_s"] > results[variant]["images_per_s"]:
                results[variant] = result
    cuda = torch.cuda.is_available()
    batch_size, _, timed = GPU_RUN if cuda else CPU_RUN
    baseline = results["fp32"]["images_per_s"]
    for result in results.values():
        result["vs_fp32"] = round(result["images_per_s"] / baseline, 2)
    output = {
        "benchmark": "throughput",
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "model": f"{BACKBONE} + MoE decoder, {IMG_SIZE}px, batch {batch_size}, {timed} timed steps, "
                 f"best of {ROUNDS} runs",
        "variants": results,
    }
    print(json.dumps(output))
    return output


if __name__ == "__main__":
    main()
