"""Checkpoint files (``files``) and resuming a Trainer from one (``resume``)."""
from engine.checkpoint.files import (FORMAT_VERSION, CheckpointError, atomic_save, check_model_format,
                                     find_resumable, load_checkpoint)

__all__ = ["FORMAT_VERSION", "CheckpointError", "atomic_save", "check_model_format", "find_resumable",
           "load_checkpoint"]
