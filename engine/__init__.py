"""Training engine: Trainer, callbacks, schedules, weight EMA, checkpoints, losses and metrics."""

__version__ = "0.15.0"  # written into eval JSON and export metadata, so numbers can be traced to a version
