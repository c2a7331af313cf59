"""GPU check: environment, fp32 / AMP / AMP + channels-last training, memory, the data loader, --compile, DDP.

The one script to run when a CUDA GPU is lent (``python benchmarks/gpu_check.py``; ``--amp fp16``
makes a newer card stand in for a T4). Every training goes through the real code path:
``build_config`` -> ``build_trainer`` -> ``Trainer.fit()`` with checkpoints in a temp folder. The
model and optimisation are those of ``configs/cod10k_edgenext_base.yaml`` (edgenext_base, 7 experts,
384 px, batch 8) from random weights on the built-in synthetic scenes, for two epochs: stage 1
(encoder frozen) and stage 2 (everything trainable; no progressive unfreezing, so the stage-2 peak
is that of the whole encoder). The training scenes are rendered once per run and served from memory,
so images/s is the GPU's rate, not the scene generator's.

Per run and stage: images/s between the stage's first and last optimizer step (the first step, with
cuDNN autotuning, is not timed), the peaks of ``torch.cuda.max_memory_allocated`` and
``max_memory_reserved`` (reset at each epoch start) and the updates skipped (fp16 GradScaler
overflows); each run's train loss, val loss and val IoU per epoch, the AMP runs' beside fp32's. The
AMP runs validate their final weights with and without autocast. ``memory``: per run and stage,
``--dry-run``'s estimate (``engine.commands.memory_estimate``) beside the measured peaks and the
memory this process holds outside PyTorch's allocator (the CUDA context: ``mem_get_info``'s used
less ``memory_reserved``, on a GPU used by no other process), and whether the setting fits a 16 GB
T4 (14.75 GiB as PyTorch reports it): the measured reserved peak plus the estimate's CUDA context
allowance within that. ``loader``: the real training loader on JPEGs on disk, with and without
``--cache disk``, against the AMP run's images/s (``benchmarks/gpu_check_loader.py``).
``--compile``: the first step (it compiles the graph) against the later ones. With two GPUs: a 2-rank
NCCL run of the real CLI under torchrun whose ranks must end with equal weights, and one whose rank 0
fails at its 2nd training batch (exit code, seconds to the end).

Prints one JSON line on stdout (progress on stderr). Without a CUDA GPU it prints one line saying so
and exits 0. The measuring functions take the device and sizes, so
``tests/benchmarks/test_gpu_check.py`` runs each of them on the CPU at tiny size.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from engine.build import build_trainer  # noqa: E402
from engine.callbacks import Callback, Order  # noqa: E402
from engine.config import AMP_MODES, ConfigError, build_config, load_yaml  # noqa: E402
from engine.commands.memory_estimate import MIB, estimate_training_memory  # noqa: E402
from engine.training.precision import resolve_amp  # noqa: E402

from benchmarks.gpu_check_ddp import cli_flags, measure_ddp  # noqa: E402,F401 - cli_flags: the tests read it here
from benchmarks.gpu_check_loader import measure_loader  # noqa: E402
from benchmarks.gpu_check_tables import memory_side_by_side, quality_side_by_side  # noqa: E402
from benchmarks.rendered_scenes import RenderedScenes  # noqa: E402

CONFIG = ROOT / "configs" / "cod10k_edgenext_base.yaml"
RUN_KEYS = ("dataset_path", "checkpoint_dir", "epochs", "stage1_epochs", "progressive_unfreeze")  # set here instead
VARIANTS = {"fp32": (False, False), "amp": (True, False), "amp_channels_last": (True, True)}  # (AMP, channels-last)
VALIDATION_TOLERANCE = {"iou": 0.01, "mae": 0.005}  # |autocast - fp32| on the same weights


def progress(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    return str(dtype or torch.float32).replace("torch.", "")


def amp_choice(mode: str, device: torch.device) -> str:
    """What ``--amp mode`` trains in on ``device``, or the one-line refusal (``--amp bf16`` on a T4)."""
    try:
        return dtype_name(resolve_amp(mode, device))
    except ConfigError as error:
        return f"refused: {error}"


def environment(device: torch.device, amp: str = "auto") -> Dict[str, Any]:
    """Versions, the card, the kernels this torch build has, and what ``--amp auto`` / ``amp`` pick."""
    cuda = device.type == "cuda"
    return {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "capability": list(torch.cuda.get_device_capability(device)) if cuda else None,
        "arch_list": list(torch.cuda.get_arch_list()), "gpus": torch.cuda.device_count(),
        "amp_auto": amp_choice("auto", device), "amp_requested": amp, "amp_used": amp_choice(amp, device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def documented_settings(scenes: int, val_scenes: int) -> Dict[str, Any]:
    """``configs/cod10k_edgenext_base.yaml`` without its data and run length: random weights,
    ``scenes`` synthetic training scenes, 2 epochs (1 in stage 1), no progressive unfreezing."""
    values = {key: value for key, value in load_yaml(str(CONFIG)).items() if key not in RUN_KEYS}
    return dict(values, pretrained=False, epochs=2, stage1_epochs=1, synthetic_train_size=scenes,
                synthetic_val_size=val_scenes, progress="off")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class EpochMarks:
    """Wall clock and images trained at the epoch's start and after each optimizer step, and its peak."""

    stage: int
    times: List[float]
    images: List[int]
    peak_bytes: Optional[int] = None
    peak_reserved_bytes: Optional[int] = None
    outside_allocator_bytes: Optional[int] = None  # at the epoch's end: the CUDA context (and NCCL's buffers)
    record: Dict[str, Any] = dataclasses.field(default_factory=dict)  # train/val loss and val IoU


class RunMeter(Callback):
    """Marks every optimizer step (after all other callbacks' work for it), each epoch's peak memory and
    its losses and IoU."""

    name = "gpu_check_meter"
    order = Order.CHECKPOINT + 1

    def __init__(self, device: torch.device):
        self.device = device
        self.epochs: List[EpochMarks] = []

    def on_epoch_start(self, trainer) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        synchronize(self.device)
        self.epochs.append(EpochMarks(trainer.stage, [time.perf_counter()], [0]))

    def on_optimizer_step(self, trainer, step) -> None:
        synchronize(self.device)  # the Trainer syncs once per update anyway (non-finite check)
        marks = self.epochs[-1]
        marks.times.append(time.perf_counter())
        batch_size = trainer.plan.batch_size(trainer.stage)
        marks.images.append(min(trainer.batch_in_epoch * batch_size, trainer.data.samples_per_rank))
        if self.device.type == "cuda":
            marks.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            marks.peak_reserved_bytes = torch.cuda.max_memory_reserved(self.device)

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        marks = self.epochs[-1]
        marks.record = {key: record[key] for key in ("train_loss", "val_loss", "val_iou")}
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            marks.outside_allocator_bytes = total - free - torch.cuda.memory_reserved(self.device)

    def epoch_records(self) -> List[Dict[str, Any]]:
        return [dict(epoch=number, stage=marks.stage, **{key: round(value, 5) for key, value in marks.record.items()})
                for number, marks in enumerate(self.epochs, 1) if marks.record]

    def summary(self) -> Dict[str, Dict[str, Any]]:
        stages = sorted({marks.stage for marks in self.epochs})
        return {f"stage{stage}": stage_summary([m for m in self.epochs if m.stage == stage]) for stage in stages}


def stage_summary(epochs: List[EpochMarks]) -> Dict[str, Any]:
    """images/s from each epoch's first to last optimizer step, first and median later step seconds, the
    peaks allocated and reserved and the memory outside the allocator (MiB)."""
    timed = [marks for marks in epochs if len(marks.times) > 2]
    images = sum(marks.images[-1] - marks.images[1] for marks in timed)
    seconds = sum(marks.times[-1] - marks.times[1] for marks in timed)
    later = [end - start for marks in epochs for start, end in zip(marks.times[1:], marks.times[2:])]
    first = epochs[0].times[1] - epochs[0].times[0] if len(epochs[0].times) > 1 else None

    def peak_mib(field: str) -> Optional[int]:
        values = [getattr(marks, field) for marks in epochs if getattr(marks, field) is not None]
        return round(max(values) / MIB) if values else None

    return {"images_per_s": round(images / seconds, 2) if seconds > 0 else None,
            "first_step_s": None if first is None else round(first, 3),
            "later_step_s": round(statistics.median(later), 4) if later else None, "timed_steps": len(later),
            "peak_memory_mb": peak_mib("peak_bytes"), "peak_reserved_mb": peak_mib("peak_reserved_bytes"),
            "outside_allocator_mb": peak_mib("outside_allocator_bytes")}


def built_trainer(device: torch.device, settings: Dict[str, Any], folder: Path, **overrides):
    """``build_trainer`` of ``settings`` on ``device``, its training scenes in memory, a ``RunMeter`` added."""
    values = dict(settings, device=device.type, checkpoint_dir=str(folder), **overrides)
    trainer = build_trainer(build_config({}, values))
    trainer.data.train_dataset = RenderedScenes(trainer.data.train_dataset, trainer.data.num_workers)
    meter = RunMeter(trainer.device)
    trainer.add_callback(meter)
    return trainer, meter


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_training(device: torch.device, settings: Dict[str, Any], folder: Path, amp: str = "off",
                     channels_last: bool = False) -> Dict[str, Any]:
    """Train ``settings`` (a ``TrainConfig`` dict) once; per-stage rates and peaks, skipped updates and,
    under autocast, the final weights validated with and without it."""
    trainer, meter = built_trainer(device, settings, folder, amp=amp, channels_last=channels_last)
    started = time.perf_counter()
    trainer.fit()
    scaler = trainer.precision.scaler
    result = {"precision": dtype_name(trainer.precision.dtype), "channels_last": channels_last,
              "stages": meter.summary(), "skipped_steps": trainer.guard.total_skipped,
              "loss_scale": scaler.get_scale() if scaler is not None else None,
              "epochs": meter.epoch_records(), "seconds": round(time.perf_counter() - started, 1)}
    if trainer.precision.dtype is not None:
        result["validation"] = compare_autocast_validation(trainer)
    # --dry-run's estimate of the same settings (one GPU), beside the measured peaks of "stages"
    result["memory"] = memory_side_by_side(estimate_training_memory(trainer.config, trainer.precision.dtype),
                                           result["stages"])
    del trainer
    free_memory(device)
    return result


def compare_autocast_validation(trainer, tolerance: Dict[str, float] = VALIDATION_TOLERANCE) -> Dict[str, Any]:
    """The Trainer's validation of its current weights under its autocast and in full precision."""
    with_autocast = trainer.validate(trainer.model)
    precision = trainer.precision
    trainer.precision = dataclasses.replace(precision, dtype=None, scaler=None)
    try:
        without_autocast = trainer.validate(trainer.model)
    finally:
        trainer.precision = precision
        trainer.data.close()  # validation restarted the persistent workers
    difference = {key: round(with_autocast[key] - without_autocast[key], 5) for key in tolerance}
    return {"with_autocast": {key: round(with_autocast[key], 5) for key in tolerance},
            "without_autocast": {key: round(without_autocast[key], 5) for key in tolerance},
            "difference": difference, "tolerance": dict(tolerance),
            "within_tolerance": all(abs(difference[key]) <= tolerance[key] for key in tolerance)}


def measure_precisions(device: torch.device, settings: Dict[str, Any], folder: Path,
                       amp: str = "auto") -> Dict[str, Any]:
    """fp32, AMP (``amp``) and AMP + channels-last, in turn, with per-stage ratios against fp32."""
    runs = {name: attempt(f"training {name}", functools.partial(measure_training, device, settings, folder / name,
                                                                 amp if use_amp else "off", channels_last))
            for name, (use_amp, channels_last) in VARIANTS.items()}  # one failing run keeps the others
    baseline = runs["fp32"].get("stages", {})
    for run in runs.values():
        run["vs_fp32"] = {stage: {key: ratio(stats[key], baseline.get(stage, {}).get(key))
                                  for key in ("images_per_s", "peak_memory_mb")}
                          for stage, stats in run.get("stages", {}).items()}
    return runs


def ratio(value: Optional[float], baseline: Optional[float]) -> Optional[float]:
    return round(value / baseline, 3) if value is not None and baseline else None


def measure_compile(device: torch.device, settings: Dict[str, Any], folder: Path, amp: str = "auto",
                    steps: int = 8, backend: Optional[str] = None) -> Dict[str, Any]:
    """``compile=True``: one stage-2 epoch of ``steps`` full batches (no partial batch, validation one
    full batch: no extra graphs); the first step compiles. ``backend`` forces a Dynamo backend (tests
    use ``"eager"``: Inductor takes minutes per graph on a small CPU)."""
    batch_size = settings.get("stage2_batch_size") or settings["batch_size"]
    sizes = dict(epochs=1, stage1_epochs=0, synthetic_train_size=steps * batch_size,
                 synthetic_val_size=settings["batch_size"])
    torch._dynamo.reset()
    stance = torch.compiler.set_stance("default", force_backend=backend) if backend else contextlib.nullcontext()
    with stance:
        trainer, meter = built_trainer(device, dict(settings, **sizes), folder, amp=amp, compile=True)
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
    stage = meter.summary()["stage2"]
    result = {"backend": backend or "inductor", "precision": dtype_name(trainer.precision.dtype),
              "steps": steps, "first_step_s": stage["first_step_s"], "later_step_s": stage["later_step_s"],
              "first_vs_later": ratio(stage["first_step_s"], stage["later_step_s"]),
              "images_per_s": stage["images_per_s"], "peak_memory_mb": stage["peak_memory_mb"],
              "seconds": round(seconds, 1)}
    del trainer
    torch._dynamo.reset()
    free_memory(device)
    return result


def attempt(part: str, measure: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """``measure()``, or its error in one line (the traceback goes to stderr): one failing part must not
    cost the others on a lent machine."""
    progress(f"{part} ...")
    started = time.perf_counter()
    try:
        result = measure()
    except Exception as error:  # noqa: BLE001 - reported in the JSON, traceback on stderr
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"}
    free_memory(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # a failed run frees its memory only now
    progress(f"{part} done in {time.perf_counter() - started:.0f} s")
    return result


def emit(result: Dict[str, Any], output: Optional[Path], final: bool = True) -> None:
    """Write ``result`` to ``output`` (also after each part, so a run cut short keeps what it measured);
    print it when ``final``."""
    line = json.dumps(result)
    if output is not None:
        output.write_text(line + "\n")
    if final:
        print(line, flush=True)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amp", choices=AMP_MODES, default="auto",
                        help="AMP of the AMP runs; fp16 makes a newer card stand in for a T4 (default: %(default)s)")
    parser.add_argument("--scenes", type=int, default=512, help="training scenes per run (default: %(default)s)")
    parser.add_argument("--val-scenes", type=int, default=64, help="validation scenes (default: %(default)s)")
    parser.add_argument("--compile-steps", type=int, default=8,
                        help="optimizer steps of the --compile run; 0 skips it (default: %(default)s)")
    parser.add_argument("--ddp-scenes", type=int, default=64,
                        help="training scenes of the 2-GPU runs; 0 skips them (default: %(default)s)")
    parser.add_argument("--loader-images", type=int, default=64,
                        help="JPEGs the data-loader part reads (synthetic, or from --dataset-path); 0 skips it "
                             "(default: %(default)s)")
    parser.add_argument("--dataset-path", type=Path, default=None,
                        help="a dataset folder (COD10K / CAMO layout) whose JPEGs the loader part reads "
                             "(default: synthetic scenes written as JPEG)")
    parser.add_argument("--ddp-timeout", type=float, default=180.0,
                        help="seconds after which a torchrun job counts as hung and is killed (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line here (default: none)")
    return parser.parse_args(argv)


def check(device: torch.device, settings: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """Every part on ``device`` at ``settings`` (a ``TrainConfig`` dict); ``args`` from :func:`parse_args`."""
    result: Dict[str, Any] = {"benchmark": "gpu_check", "gpu": device.type == "cuda",
                              "environment": environment(device, args.amp), "settings": settings}
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as name:
        folder = Path(name)
        parts = {"training": lambda: measure_precisions(device, settings, folder / "training", args.amp)}
        if args.loader_images > 0:
            parts["loader"] = lambda: measure_loader(device, settings, folder / "loader",
                                                     result["training"].get("amp"), args.loader_images,
                                                     args.dataset_path)
        else:
            result["loader"] = {"skipped": "--loader-images 0"}
        if gpus >= 2 and args.ddp_scenes > 0:
            ddp_settings = dict(settings, synthetic_train_size=args.ddp_scenes)
            parts["ddp"] = lambda: measure_ddp(device, ddp_settings, folder / "ddp", args.ddp_timeout, progress)
        else:
            result["ddp"] = {"skipped": "--ddp-scenes 0" if args.ddp_scenes <= 0 else f"{gpus} GPU(s), 2 needed"}
        if args.compile_steps > 0:  # last: the slowest part and the least predictable
            parts["compile"] = lambda: measure_compile(device, settings, folder / "compile", args.amp,
                                                       args.compile_steps)
        else:
            result["compile"] = {"skipped": "--compile-steps 0"}
        for part, measure in parts.items():
            result[part] = attempt(part, measure)
            if part == "training":  # the last epoch's losses and IoU of each run, beside fp32's
                result["quality"] = quality_side_by_side(result["training"])
            emit(result, args.output, final=False)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        emit({"benchmark": "gpu_check", "gpu": False, "skipped": "no CUDA GPU: nothing measured"}, args.output)
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    emit(check(torch.device("cuda", 0), documented_settings(args.scenes, args.val_scenes), args), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
