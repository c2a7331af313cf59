"""Checkpoints: the layout and its readers (``format``), atomic files (``files``) and resuming a
Trainer from one (``resume``)."""
from engine.checkpoint.files import atomic_save, find_resumable, load_checkpoint
from engine.checkpoint.format import FORMAT_VERSION, CheckpointError, check_model_format

__all__ = ["FORMAT_VERSION", "CheckpointError", "atomic_save", "check_model_format", "find_resumable",
           "load_checkpoint"]
