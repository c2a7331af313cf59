"""Per-optimizer-step learning-rate schedules as pure functions of the step.

Every schedule is ``lr_at(step)`` on a segment of ``total_steps`` optimizer updates: linear warmup
from 0 over ``warmup_steps``, then

- ``cosine``: ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2``, t in [0, 1] after warmup;
- ``constant``: ``base_lr``;
- ``warmup-constant-cosine``: ``base_lr`` until the last 20 % of the segment, cosine to ``min_lr`` there.

No hidden ``last_epoch`` state: resume repositions the schedule by passing the step it is at.
``WindowPlan`` groups an epoch's micro-batches into the accumulation windows those steps count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DECAY_FRACTION = 0.2  # warmup-constant-cosine decays over the last 20 % of the segment


@dataclass(frozen=True)
class LRSchedule:
    """One schedule segment (a training stage, or what is left of it after a re-plan).

    Attributes:
        kind: ``cosine`` | ``constant`` | ``warmup-constant-cosine``.
        base_lr: peak LR reached after warmup.
        min_lr: floor of the cosine decay.
        total_steps: optimizer updates in the segment.
        warmup_steps: linear-warmup updates at the start of the segment.
    """

    kind: str
    base_lr: float
    min_lr: float
    total_steps: int
    warmup_steps: int = 0

    def lr_at(self, step: int) -> float:
        """LR for the optimizer update with 0-based index ``step`` within this segment."""
        step = max(0, min(step, self.total_steps - 1)) if self.total_steps > 0 else 0
        if step < self.warmup_steps:
            # (step + 1) so the first update already moves: warmup from base/W up to base.
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        decay_start = self.warmup_steps
        if self.kind == "warmup-constant-cosine":
            decay_start = max(self.warmup_steps, int(round(self.total_steps * (1 - DECAY_FRACTION))))
            if step < decay_start:
                return self.base_lr
        decay_steps = max(1, self.total_steps - 1 - decay_start)
        progress = min(1.0, (step - decay_start) / decay_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(num_samples: int, batch_size: int, accumulation_steps: int) -> int:
    """Optimizer updates per epoch: ``ceil(ceil(N / batch) / accumulation)`` (last window partial)."""
    micro_batches = math.ceil(num_samples / batch_size)
    return math.ceil(micro_batches / accumulation_steps)


class WindowPlan:
    """Accumulation windows of one epoch: ``accumulation`` micro-batches each, the last may be short.

    Args:
        num_samples: samples in the epoch.
        batch_size: samples per micro-batch (the last micro-batch may be smaller).
        accumulation: micro-batches per optimizer step.
    """

    def __init__(self, num_samples: int, batch_size: int, accumulation: int):
        self.num_samples, self.batch_size, self.accumulation = num_samples, batch_size, accumulation
        self.num_batches = math.ceil(num_samples / batch_size)
        self.num_windows = steps_per_epoch(num_samples, batch_size, accumulation)  # the schedule's count

    def window_of(self, batch_index: int) -> int:
        return batch_index // self.accumulation

    def is_window_end(self, batch_index: int) -> bool:
        return (batch_index + 1) % self.accumulation == 0 or batch_index + 1 == self.num_batches

    def samples_in_window(self, batch_index: int) -> int:
        first_batch = self.window_of(batch_index) * self.accumulation
        first_sample = first_batch * self.batch_size
        last_sample = min(self.num_samples, (first_batch + self.accumulation) * self.batch_size)
        return last_sample - first_sample
