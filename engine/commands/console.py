"""How the commands talk to the terminal: log lines through tqdm (progress bars stay intact), and the
error types whose message ``train_ultimate.main`` prints as the whole answer."""
from __future__ import annotations

import logging
import sys


class TqdmHandler(logging.StreamHandler):
    """Log lines printed through tqdm so they do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never crash training
            self.handleError(record)


def setup_logging(quiet: bool) -> None:
    """INFO lines with a time stamp on stderr (WARNING and up with ``quiet``)."""
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler], force=True)


def user_errors() -> tuple:
    """Exception types whose message is a complete one-line explanation for the user."""
    from data.layouts import DatasetError
    from engine.checkpoint import CheckpointError
    from engine.config import ConfigError
    from engine.runtime.errors import DeviceOutOfMemoryError
    from engine.runtime.launch import DevicesError
    from models import GradCheckpointingError, PretrainedWeightsError, UnknownBackboneError

    return (ConfigError, DatasetError, CheckpointError, PretrainedWeightsError, UnknownBackboneError,
            GradCheckpointingError, DeviceOutOfMemoryError, DevicesError)


def missing_package_line(error: ModuleNotFoundError) -> str:
    """``engine.packages.missing_package_line``: one line naming a package that is not installed (a
    missing module of this repository is re-raised). Standard library only, like this module."""
    from engine.packages import missing_package_line as line

    return line(error)


def cuda_out_of_memory() -> type:
    import torch

    return torch.cuda.OutOfMemoryError
