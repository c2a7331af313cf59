"""Run under torchrun by tests/engine/test_ddp*.py, in one of two modes.

``ddp_worker.py SETTINGS_JSON OUTPUT``: train, validate, then dump this rank's final state and
metrics to OUTPUT.
``ddp_worker.py cli train ...``: the real command line (``train_ultimate.main``); with
``DDP_TEST_FAIL_RANK`` set, that rank's training forward number ``DDP_TEST_FAIL_BATCH`` (default 2)
raises a disk-full OSError, as a failing disk or a GPU running out of memory would.
"""
import errno
import gc
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.build import build_trainer  # noqa: E402
from engine.config import build_config  # noqa: E402
from engine.runtime.distributed import shutdown  # noqa: E402
from tests.engine.capture_backend import CountingBackend  # noqa: E402

FAILED_PATH = "/injected/by/ddp_worker.py"


def main(settings_json: str, output: str) -> None:
    """Train with ``settings_json``; with ``"compile": true`` graphs go through :class:`CountingBackend`."""
    settings = json.loads(settings_json)
    backend = CountingBackend()
    gc.disable()
    with torch.compiler.set_stance("default", force_backend=backend) if settings.get("compile") else nullcontext():
        trainer = build_trainer(build_config({}, settings))
        trainer.fit()
    ema = trainer.averaged_models.get("ema")
    # Automatic collection was off during fit: a replaced DDP wrapper still listed here was left to a
    # cyclic GC pass that may come late (its reducer holds a gradient copy), not freed at the re-wrap;
    # the last wrapper fit() drops itself.
    # type(), not isinstance(): isinstance on a dead weak proxy (torch.compile keeps some) raises
    wrappers = sum(type(o) is torch.nn.parallel.DistributedDataParallel for o in gc.get_objects())
    metrics = trainer.validate(trainer.model)  # all-reduced: every rank takes part
    torch.save({"model": trainer.unwrapped_model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "compiled_calls": backend.calls, "live_ddp_wrappers": wrappers, "global_step": trainer.global_step,
                "metrics": metrics,
                "image_blind_iou": trainer.image_blind_iou, "per_image": trainer.last_per_image_scores},
               f"{output}/rank{trainer.distributed.rank}.pt")
    shutdown(trainer.distributed)


def inject_failure(rank: int, batch: int) -> None:
    """Make ``rank``'s training forward number ``batch`` raise (the other ranks go on into the
    gradient all-reduce, where they wait for this one)."""
    if int(os.environ.get("RANK", "0")) != rank:
        return
    from models.segmenter import CamoSegmenter

    forward, calls = CamoSegmenter.forward, [0]

    def failing_forward(self, images):
        calls[0] += self.training
        if self.training and calls[0] == batch:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), FAILED_PATH)
        return forward(self, images)

    CamoSegmenter.forward = failing_forward


def run_cli(argv) -> int:
    import train_ultimate

    if "DDP_TEST_FAIL_RANK" in os.environ:
        inject_failure(int(os.environ["DDP_TEST_FAIL_RANK"]), int(os.environ.get("DDP_TEST_FAIL_BATCH", "2")))
    return train_ultimate.main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        sys.exit(run_cli(sys.argv[2:]))
    main(sys.argv[1], sys.argv[2])
