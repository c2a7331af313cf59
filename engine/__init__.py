"""Training engine: Trainer, callbacks, schedules, weight EMA, checkpoints, losses and metrics."""
