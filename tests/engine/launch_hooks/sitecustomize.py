"""Test hooks for the ranks that ``train --devices N`` launches (on PYTHONPATH only in tests).

Python imports ``sitecustomize`` at start-up, so the ranks the launcher spawns run these hooks before
``train_ultimate.py``. Each acts on one rank, named by ``$HOOK_RANK``:

- ``HOOK_SIGNAL=<event>:<n>:<target>``: send SIGTERM to ``self`` or to the ``launcher`` (the rank's
  parent) at the rank's n-th ``train`` forward (micro-batch), ``val`` forward, or ``save``
  (``torch.save``, i.e. inside a checkpoint write).
- ``HOOK_FAIL=<n>``: the rank's n-th training forward raises a disk-full OSError.

On every rank, ``HOOK_THREADS_AT_EXIT=1`` prints ``rank <r> gloo threads at exit: <n>`` when the
interpreter starts to exit (atexit): threads of a process group still alive then may abort the rank
while the interpreter finalises.
"""
import atexit
import errno
import os
import signal
import sys

FAILED_PATH = "/injected/by/launch_hooks"


def _install() -> None:
    import torch

    from models.segmenter import CamoSegmenter

    event, count, target = os.environ.get("HOOK_SIGNAL", "none:0:self").split(":")
    fail_at = int(os.environ.get("HOOK_FAIL", "0"))
    seen = {"train": 0, "val": 0, "save": 0}

    def signal_if(kind: str) -> None:
        seen[kind] += 1
        if kind == event and seen[kind] == int(count):
            os.kill(os.getppid() if target == "launcher" else os.getpid(), signal.SIGTERM)

    forward, save = CamoSegmenter.forward, torch.save

    def hooked_forward(self, images):
        signal_if("train" if self.training else "val")
        if self.training and seen["train"] == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), FAILED_PATH)
        return forward(self, images)

    def hooked_save(*args, **kwargs):
        signal_if("save")
        return save(*args, **kwargs)

    CamoSegmenter.forward = hooked_forward
    torch.save = hooked_save


if "RANK" in os.environ and os.environ.get("RANK") == os.environ.get("HOOK_RANK"):
    _install()


def _count_gloo_threads() -> None:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    print(f"rank {os.environ['RANK']} gloo threads at exit: {sum('gloo' in name for name in names)}", file=sys.stderr)


if "RANK" in os.environ and os.environ.get("HOOK_THREADS_AT_EXIT") == "1":
    atexit.register(_count_gloo_threads)
