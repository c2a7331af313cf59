"""The 2-GPU part of ``benchmarks/gpu_check.py``: the real CLI on two ranks under torchrun.

One run whose ranks must end with equal weights, and one whose rank 0 fails at a training batch (the
job must end, not hang). nccl on GPUs; on the CPU gloo runs the same code, which
``tests/benchmarks/test_gpu_check.py`` does at tiny size. Torchrun starts this file once per rank
(``--_rank-worker``).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.training.callback import Callback, Order  # noqa: E402

FAIL_AT_BATCH = 2  # rank 0's training forward that raises in the DDP failure run
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def cli_flags(settings: Dict[str, Any]) -> List[str]:
    """``train`` flags of a ``TrainConfig`` dict (field names are the flag names)."""
    flags: List[str] = []
    for key, value in settings.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            flags += [f"--{flag}", str(value)]
    return flags


def measure_ddp(device: torch.device, settings: Dict[str, Any], folder: Path, timeout_s: float = 180.0,
                progress: Callable[[str], None] = lambda message: None) -> Dict[str, Any]:
    """Two ranks of the real CLI under torchrun (nccl on GPUs, gloo on the CPU): one run whose ranks
    must end with equal weights, one whose rank 0 fails at its training batch ``FAIL_AT_BATCH``."""
    flags = cli_flags(dict(settings, device=device.type))
    runs = {}
    for name, fail_at_batch in (("equal_weights", 0), ("rank0_failure", FAIL_AT_BATCH)):
        progress(f"torchrun, 2 ranks: {name}")
        run_folder = folder / name
        runs[name] = torchrun_cli(flags + ["--checkpoint-dir", str(run_folder / "ckpt")], run_folder,
                                  fail_at_batch, timeout_s)
    runs["equal_weights"].update(compare_ranks(folder / "equal_weights"))
    return {"backend": "nccl" if device.type == "cuda" else "gloo", **runs}


def torchrun_cli(flags: List[str], folder: Path, fail_at_batch: int, timeout_s: float) -> Dict[str, Any]:
    """Run ``train_ultimate.py train FLAGS`` on 2 ranks through :func:`rank_worker`; exit code, seconds,
    seconds from the injected failure to the end, and the last error line. A job past ``timeout_s`` is killed."""
    folder.mkdir(parents=True)
    command = [*TORCHRUN, str(Path(__file__).resolve()), "--_rank-worker", str(folder), str(fail_at_batch),
               "train", *flags]
    started = time.time()
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its own process group: a hung job is killed whole
    timed_out = False
    try:
        _, stderr = job.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        _, stderr = job.communicate()
        timed_out = True
    ended = time.time()
    # the CLI's one-line errors start with "error:"; torchrun's summary names each failed rank's exit code
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    failed_ranks = re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", stderr)
    result = {"exit_code": job.returncode, "timed_out": timed_out, "seconds": round(ended - started, 1),
              "error_line": errors[-1][:300] if errors else None,
              "rank_exit_codes": {rank: int(code) for rank, code in failed_ranks},
              "grad_stride_warning": "Grad strides do not match bucket view strides" in stderr}
    marker = folder / "failed_at"
    if marker.exists():
        result["seconds_after_failure"] = round(ended - float(marker.read_text()), 1)
    return result


def compare_ranks(folder: Path) -> Dict[str, Any]:
    """Whether rank 0's and rank 1's final weights (``rank<r>.pt``, from :class:`SaveRankWeights`) are equal."""
    paths = [folder / f"rank{rank}.pt" for rank in (0, 1)]
    if not all(path.exists() for path in paths):
        return {"ranks_equal": None, "note": "a rank wrote no final weights"}
    rank0, rank1 = (torch.load(path, weights_only=True) for path in paths)
    differences = [(rank0[key].double() - rank1[key].double()).abs().max().item()
                   for key in rank0 if rank0[key].is_floating_point() and rank0[key].numel()]
    return {"ranks_equal": rank0.keys() == rank1.keys() and all(torch.equal(rank0[key], rank1[key]) for key in rank0),
            "max_abs_difference": max(differences, default=0.0), "tensors_compared": len(rank0)}


class SaveRankWeights(Callback):
    """Under torchrun: every rank saves its final weights, so the ranks can be compared."""

    name = "gpu_check_rank_weights"
    order = Order.CHECKPOINT + 1

    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_end(self, trainer) -> None:
        weights = {key: value.detach().cpu() for key, value in trainer.unwrapped_model.state_dict().items()}
        torch.save(weights, self.folder / f"rank{trainer.distributed.rank}.pt")


def fail_training_forward(model: torch.nn.Module, batch: int, marker: Path) -> None:
    """Make ``model``'s training forward number ``batch`` raise a CUDA out-of-memory error (writing the
    time to ``marker``); the other rank goes on into the gradient all-reduce and waits there."""
    forward, calls = model.forward, [0]

    def failing_forward(images):
        calls[0] += model.training
        if model.training and calls[0] == batch:
            marker.write_text(repr(time.time()))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by benchmarks/gpu_check.py)")
        return forward(images)

    model.forward = failing_forward  # an instance attribute: DDP's call of the module reaches it


def rank_worker(folder: Path, fail_at_batch: int, argv: List[str]) -> int:
    """One torchrun rank: ``train_ultimate.main(argv)``, the real CLI, with :class:`SaveRankWeights`
    added to its Trainer and, with ``fail_at_batch``, rank 0's model failing at that training batch."""
    import engine.build
    import train_ultimate

    build = engine.build.build_trainer

    def build_and_watch(config, *args, **kwargs):
        trainer = build(config, *args, **kwargs)
        trainer.add_callback(SaveRankWeights(folder))
        if fail_at_batch and trainer.distributed.is_main:
            fail_training_forward(trainer.unwrapped_model, fail_at_batch, folder / "failed_at")
        return trainer

    engine.build.build_trainer = build_and_watch  # run_train imports it at call time
    return train_ultimate.main(argv)

if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--_rank-worker":  # one rank of measure_ddp's torchrun jobs
        sys.exit(rank_worker(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
    sys.exit("usage: torchrun ... benchmarks/gpu_check_ddp.py --_rank-worker FOLDER FAIL_AT_BATCH train [flags]; "
             "run benchmarks/gpu_check.py instead")
