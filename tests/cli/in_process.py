"""Run ``train_ultimate.main`` in the test process (cheaper than a subprocess), restoring what it changes.

``run_main`` returns the exit code; ``run_cli`` also captures stdout/stderr like ``subprocess.run`` does.
What in-process capture cannot see: output written at import time (torch, timm, albumentations are already
imported here) and C libraries writing straight to file descriptor 2 (libjpeg, OpenCV). A few tests keep a
real subprocess for that.
"""
import contextlib
import io
import logging
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import train_ultimate

ROOT = Path(__file__).resolve().parents[2]
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_main(*args) -> int:
    """``train_ultimate.main`` with ``args`` as strings; root handlers and level are put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return train_ultimate.main([str(arg) for arg in args])
    finally:
        root.handlers[:], root.level = handlers, level


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning on the (captured) stderr, as a fresh interpreter would."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _fresh_process_warnings():
    """Warnings shown on stderr with Python's default filters, not recorded by pytest.

    Without this, pytest collects every warning and a stray one would never reach ``stderr``, so the
    "one line on stderr" assertions would be weaker than with a subprocess. Changing the filters also
    resets the once-per-location registries, so a warning already shown by an earlier test shows again.
    """
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = _show_warning  # catch_warnings puts pytest's recorder back on exit
        yield


@contextlib.contextmanager
def _restored_global_state():
    """Put back the process-wide state a CLI run may change: logging, signals, threads, RNGs, torch flags."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    signal_handlers = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level
        for signum, handler in signal_handlers.items():
            signal.signal(signum, handler)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def run_cli(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python train_ultimate.py *args`` in this process: exit code, stdout and stderr as strings.

    Runs in ``cwd`` (default: the repository root, like the subprocess it replaces). ``SystemExit`` (argparse errors,
    ``--help``) becomes the exit code, as the interpreter would make it; any other exception is not
    caught: a user would see it as a traceback, so the test must fail.
    """
    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with _restored_global_state(), contextlib.chdir(cwd), _fresh_process_warnings(), \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = train_ultimate.main(argv)
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                returncode = exit_.code or 0
            else:  # sys.exit("message"): printed on stderr, exit status 1
                print(exit_.code, file=sys.stderr)
                returncode = 1
    return subprocess.CompletedProcess(["train_ultimate.py", *argv], returncode, stdout.getvalue(),
                                       stderr.getvalue())


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (to check that a command changed nothing)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_refused(result, *words) -> None:
    """Exit code 2, exactly one ``error:`` line holding every one of ``words``, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
