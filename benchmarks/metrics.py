"""Benchmark: per-epoch validation metrics (IoU, Dice, MAE), batched in torch on the training device
(``engine.evaluation.mask_scores``) vs a per-image numpy loop with a host copy per image.

Same 200 probability maps at 384x384 (default), same batches. Prints one JSON line with both
times (best of ``--repeats``), their ratio and the largest difference between the two results.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.evaluation.mask_scores import MetricAccumulator, per_image_scores  # noqa: E402


def make_batches(images: int, size: int, batch_size: int, device: torch.device):
    """Smooth random probability maps and blob masks, already on ``device`` as validation has them."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, images, batch_size):
        count = min(batch_size, images - start)
        noise = torch.rand(count, 1, size // 16, size // 16, generator=generator)
        probabilities = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
        masks = (torch.nn.functional.interpolate(torch.rand(count, 1, 6, 6, generator=generator), size=(size, size),
                                                 mode="bilinear", align_corners=False) > 0.6).float()
        batches.append((probabilities.to(device), masks.to(device)))
    return batches


def batched(batches, device: torch.device) -> dict:
    accumulator = MetricAccumulator(device)
    for probabilities, masks in batches:
        accumulator.update(per_image_scores(probabilities, masks))
    return accumulator.compute()  # the only host sync of the epoch


def numpy_loop(batches) -> dict:
    sums = {"iou": 0.0, "dice": 0.0, "mae": 0.0}
    count = 0
    for probabilities, masks in batches:
        for probability, mask in zip(probabilities, masks):
            prediction = probability.cpu().numpy()[0]  # one host copy per image
            target = mask.cpu().numpy()[0] > 0.5
            predicted = prediction > 0.5
            intersection = np.logical_and(predicted, target).sum()
            union = np.logical_or(predicted, target).sum()
            total = predicted.sum() + target.sum()
            sums["iou"] += 1.0 if union == 0 else intersection / union
            sums["dice"] += 1.0 if total == 0 else 2 * intersection / total
            sums["mae"] += float(np.abs(prediction - target).mean())
            count += 1
    return {key: value / count for key, value in sums.items()}


def best_time(function, repeats: int, device: torch.device):
    timings, result = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        timings.append(time.perf_counter() - start)
    return min(timings), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="validation images (default: 200)")
    parser.add_argument("--size", type=int, default=384, help="image side (default: 384)")
    parser.add_argument("--batch-size", type=int, default=16, help="validation batch size (default: 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, best kept (default: 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device of the maps (default: cuda when visible, else cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = make_batches(args.images, args.size, args.batch_size, device)
    batched(batches, device)  # warm-up (CUDA context, kernels)
    batched_seconds, batched_result = best_time(lambda: batched(batches, device), args.repeats, device)
    loop_seconds, loop_result = best_time(lambda: numpy_loop(batches), args.repeats, device)
    print(json.dumps({
        "benchmark": "validation_metrics", "device": str(device), "torch_threads": torch.get_num_threads(),
        "images": args.images, "size": args.size, "batch_size": args.batch_size,
        "batched_torch_seconds": round(batched_seconds, 5), "numpy_loop_seconds": round(loop_seconds, 5),
        "speedup": round(loop_seconds / batched_seconds, 2),
        "max_abs_difference": max(abs(batched_result[key] - loop_result[key]) for key in loop_result),
    }))


if __name__ == "__main__":
    main()
