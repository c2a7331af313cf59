"""Benchmark: weight-EMA update time of engine.callbacks.weight_ema.WeightEMA vs timm's ModelEmaV3.

Both update the same ``edgenext_base`` model (parameters and buffers) on the CPU; prints one JSON
line with the median time per update and the ratio ours / timm (goal: <= 1.0).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from timm.utils.model_ema import ModelEmaV3  # noqa: E402

from engine.callbacks.weight_ema import WeightEMA  # noqa: E402


def median_seconds(update, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        update()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main(backbone: str = "edgenext_base", repeats: int = 30) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False)
    ours = WeightEMA(model, decay=0.999)
    reference = ModelEmaV3(model, decay=0.999)
    step = iter(range(1, 10**9))
    for _ in range(3):  # warm-up both
        ours.update(model, next(step))
        reference.update(model)
    # Interleave the two so machine noise hits both alike.
    ours_times, timm_times = [], []
    for _ in range(repeats):
        ours_times.append(median_seconds(lambda: ours.update(model, next(step)), 1))
        timm_times.append(median_seconds(lambda: reference.update(model), 1))
    ours_median, timm_median = statistics.median(ours_times), statistics.median(timm_times)
    result = {
        "benchmark": "ema_update", "backbone": backbone, "device": "cpu", "threads": torch.get_num_threads(),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "ours_ms": round(ours_median * 1e3, 3), "timm_model_ema_v3_ms": round(timm_median * 1e3, 3),
        "ratio": round(ours_median / timm_median, 3), "goal": "ratio <= 1.0",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
