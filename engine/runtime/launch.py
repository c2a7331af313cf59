"""``--devices``: train on every visible GPU, one process each, started by PyTorch's elastic launcher.

``python train_ultimate.py train ...`` on a machine with two GPUs (Kaggle's "GPU T4 x2") starts two
ranks of the same command through ``torch.distributed.launcher.elastic_launch``, the machinery
behind ``torchrun --standalone``, so a plain command and a notebook's ``!python`` cell use both
cards. Under torchrun (or any launcher that set ``LOCAL_RANK``) nothing is launched: its
``--nproc_per_node`` decides. On the CPU ``--devices N`` starts N gloo ranks (how CI tests this path).

How a launched job ends:
- every rank exits 0: exit 0;
- a rank fails: its own one-line error is on stderr already; the launcher stops the others
  (SIGTERM, then SIGKILL after ``SHUTDOWN_SECONDS``) and the job exits with that rank's code (2 for
  a user error), without the launcher's own failure report;
- the launcher gets SIGTERM/SIGINT (Kaggle ending the session, Ctrl-C): it forwards the signal, the
  ranks agree to stop, save ``last.pth`` and exit 128 + signal, and so does the job.
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

# How long the launcher waits for the ranks to save and exit after forwarding a stop signal, before
# SIGKILL: a checkpoint save of the reference model takes seconds, and Kaggle gives a session's end
# about as long.
SHUTDOWN_SECONDS = 60
# The elastic agent reports each failure with a traceback-sized log record; the ranks' own one-line
# errors say what went wrong, so its loggers are kept quiet.
_LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")


class DevicesError(ValueError):
    """``--devices`` asks for more GPUs than are visible; the message is one line with the fix."""


# Set for the ranks this module starts: they were launched by ``--devices``, not by a user's torchrun.
LAUNCHED_BY_DEVICES = "CAMO_LAUNCHED_BY_DEVICES"


def under_launcher() -> bool:
    """True inside a rank that torchrun (or this module) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def uses_cuda(device: str) -> bool:
    return device != "cpu" and torch.cuda.is_available()


def processes_for(devices: str, device: str) -> int:
    """How many ranks ``--devices`` (validated: ``auto`` or ``N``) asks for here (1: train in this process).

    ``auto``: every visible GPU (1 on the CPU or with ``--device cpu``). ``N``: N ranks, one per GPU,
    or N gloo ranks on the CPU.
    """
    visible = torch.cuda.device_count() if uses_cuda(device) else 0
    if devices == "auto":
        return max(visible, 1)
    requested = int(devices)
    if visible and requested > visible:
        raise DevicesError(f"--devices {requested} asks for more GPUs than the {visible} visible; pass --devices "
                           f"{visible} (or auto)")
    return requested


def ranks_to_launch(config, devices_given: bool) -> int:
    """How many ranks ``train`` starts itself (1: it trains in this process); logs the start-up line.

    ``config``: the resolved ``TrainConfig``; ``devices_given``: ``--devices`` typed or in the YAML
    (under torchrun it is then ignored, with a note).
    """
    if under_launcher():
        if devices_given and os.environ.get("RANK", "0") == "0" and LAUNCHED_BY_DEVICES not in os.environ:
            logger.info("--devices %s is ignored under torchrun: its --nproc_per_node decides", config.devices)
        return 1
    processes = processes_for(config.devices, config.device)
    if processes > 1:
        logger.info(describe_launch(processes, uses_cuda(config.device), config.batch_size,
                                    config.stage2_batch_size or config.batch_size, config.accumulation_steps))
    return processes


def describe_launch(processes: int, use_cuda: bool, batch_size: int, stage2_batch_size: int,
                    accumulation_steps: int) -> str:
    """The start-up line: how many GPUs, the global batch, and how to use one."""
    what = f"{processes} GPUs" if use_cuda else f"{processes} CPU processes (gloo)"
    per_rank = f"{batch_size}" if stage2_batch_size == batch_size else f"{batch_size} (stage 2: {stage2_batch_size})"
    updates = f" x {accumulation_steps} accumulation steps" if accumulation_steps > 1 else ""
    return (f"Training on {what}, one process each: global batch {batch_size * processes * accumulation_steps} = "
            f"{per_rank} per process x {processes}{updates}; --devices 1 trains on one")


def launch_ranks(processes: int, script: str, argv: Sequence[str]) -> int:
    """Run ``python script *argv`` as ``processes`` ranks of one job; returns the job's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in _LAUNCHER_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # torchrun's rule: the CPU cores shared out between the ranks, unless the user set it
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    os.environ[LAUNCHED_BY_DEVICES] = "1"
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    if "shutdown_timeout" in LaunchConfig.__dataclass_fields__:  # newer torch; older waits its fixed 30 s
        config.shutdown_timeout = SHUTDOWN_SECONDS
    try:
        elastic_launch(config, sys.executable)(script, *argv)
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        code = failure.exitcode
        return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
    except SignalException as error:
        return 128 + int(error.sigval)
    return 0
