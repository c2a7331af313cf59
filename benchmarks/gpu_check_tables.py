"""The side-by-side tables of ``benchmarks/gpu_check.py``: the memory estimate beside the measured
peaks (and whether the setting fits a 16 GB T4), and each run's loss and IoU beside fp32's."""
from __future__ import annotations

from typing import Any, Dict, Iterable

from engine.commands.memory_estimate import CUDA_CONTEXT, MIB, T4_CAPACITY, StageMemory


def memory_side_by_side(estimates: Iterable[StageMemory],
                        stages: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per stage: the estimate (its need per GPU and its ``max_memory_allocated`` figure) beside the
    measured peaks, and whether the setting fits a 16 GB T4: the measured reserved peak plus the
    CUDA context allowance within a T4's 14.75 GiB (None without CUDA measurements)."""
    table = {}
    for estimate in estimates:
        measured = stages.get(f"stage{estimate.stage}", {})
        reserved = measured.get("peak_reserved_mb")
        need = None if reserved is None else reserved + round(CUDA_CONTEXT / MIB)
        table[f"stage{estimate.stage}"] = {
            "estimate_need_mib": round(estimate.total / MIB), "estimate_allocated_mib": round(estimate.allocated / MIB),
            "max_memory_allocated_mib": measured.get("peak_memory_mb"), "max_memory_reserved_mib": reserved,
            "outside_allocator_mib": measured.get("outside_allocator_mb"),
            "cuda_context_allowance_mib": round(CUDA_CONTEXT / MIB), "t4_capacity_mib": round(T4_CAPACITY / MIB),
            "estimate_fits_t4": estimate.fits(), "fits_16gb_t4": None if need is None else need <= T4_CAPACITY / MIB}
    return table


def quality_side_by_side(runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The last epoch's train loss, val loss and val IoU of each run beside fp32's, and each run's
    difference from fp32 (same seed and scenes: AMP should train about as well)."""
    last = {name: run["epochs"][-1] for name, run in runs.items() if isinstance(run, dict) and run.get("epochs")}
    keys = ("train_loss", "val_loss", "val_iou")
    table: Dict[str, Any] = {name: {key: record[key] for key in keys} for name, record in last.items()}
    if "fp32" in last:
        table["minus_fp32"] = {name: {key: round(record[key] - last["fp32"][key], 5) for key in keys}
                               for name, record in last.items() if name != "fp32"}
    return table
