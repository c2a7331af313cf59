"""The two-stage plan: which stage an epoch is in, its batch size, its LR and its unfrozen stages.

Epochs are 0-based here (``epoch_index``); logs and ``metrics.jsonl`` show them 1-based.
Stage 1 covers ``[0, stage2_start)`` with the encoder frozen; stage 2 covers
``[stage2_start, epochs)``. Each stage runs its own ``LRSchedule`` segment starting at the stage's
*origin* epoch; a resume with changed schedule flags moves the origin to the resume epoch, which
re-plans the rest of the run (the plateau-breaking recipe) while everything else stays a pure
function of (config, dataset size, plan state). ``--auto-adjust-lr`` scales a stage's LR on a
plateau through ``PlanState.lr_scales``, so the scaled LR is part of the plan: checkpointed,
shown by ``--dry-run``, and independent of which callbacks a resumed run enables.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from engine.config import ConfigError, TrainConfig
from engine.training.schedule import LRSchedule, steps_per_epoch


@dataclass
class PlanState:
    """The only mutable part of the plan, saved in checkpoints under ``plan``."""

    stage2_start: int
    origins: Dict[int, int] = field(default_factory=dict)
    lr_scales: Dict[int, float] = field(default_factory=dict)  # stage -> plateau LR multiplier (absent: 1)

    def state_dict(self) -> dict:
        return {"stage2_start": self.stage2_start, "origins": {str(k): v for k, v in self.origins.items()},
                "lr_scales": {str(k): v for k, v in self.lr_scales.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PlanState":
        return cls(int(state["stage2_start"]), {int(k): int(v) for k, v in state["origins"].items()},
                   {int(k): float(v) for k, v in (state.get("lr_scales") or {}).items()})

    @classmethod
    def fresh(cls, config: TrainConfig) -> "PlanState":
        stage2_start = 0 if config.skip_stage1 else config.stage1_epochs
        return cls(stage2_start, {1: 0, 2: stage2_start})


class StagePlan:
    """Answers every "what happens at epoch e / update u" question of a run.

    Args:
        config: the run's settings.
        num_train_samples: training images per epoch.
        state: stage boundary and schedule origins.
    """

    def __init__(self, config: TrainConfig, num_train_samples: int, state: PlanState):
        self.config = config
        self.num_train_samples = num_train_samples
        self.state = state

    def stage_of(self, epoch_index: int) -> int:
        return 1 if epoch_index < self.state.stage2_start else 2

    def batch_size(self, stage: int) -> int:
        return self.config.batch_size if stage == 1 else self.config.resolved_stage2_batch_size

    def base_lr(self, stage: int) -> float:
        return self.config.lr if stage == 1 else self.config.stage2_lr

    def steps_per_epoch(self, stage: int) -> int:
        return steps_per_epoch(self.num_train_samples, self.batch_size(stage), self.config.accumulation_steps)

    def stage_end(self, stage: int) -> int:
        return self.state.stage2_start if stage == 1 else self.config.epochs

    def schedule(self, stage: int) -> LRSchedule:
        """The LR segment of ``stage`` from its origin to the stage's last epoch."""
        per_epoch = self.steps_per_epoch(stage)
        origin = self.state.origins.get(stage, 0 if stage == 1 else self.state.stage2_start)
        total = max(1, (self.stage_end(stage) - origin) * per_epoch)
        warmup = min(total, int(round(self.config.warmup_epochs * per_epoch)))
        return LRSchedule(self.config.scheduler, self.base_lr(stage), self.config.min_lr, total, warmup)

    def lr_at(self, epoch_index: int, step_in_epoch: int) -> float:
        """Head/decoder LR of the update ``step_in_epoch`` (0-based) of epoch ``epoch_index``.

        A plateau scale multiplies the scheduled LR but never pushes it below ``--min-lr``.
        """
        stage = self.stage_of(epoch_index)
        origin = self.state.origins.get(stage, 0 if stage == 1 else self.state.stage2_start)
        step = (epoch_index - origin) * self.steps_per_epoch(stage) + step_in_epoch
        scheduled = self.schedule(stage).lr_at(step)
        scale = self.lr_scale(stage)
        if scale == 1.0:
            return scheduled
        return max(scheduled * scale, min(scheduled, self.config.min_lr))

    def lr_scale(self, stage: int) -> float:
        return self.state.lr_scales.get(stage, 1.0)

    def scale_lr(self, stage: int, factor: float) -> float:
        """Multiply the rest of ``stage``'s LR by ``factor`` (a plateau); returns the new scale."""
        self.state.lr_scales[stage] = self.lr_scale(stage) * factor
        return self.state.lr_scales[stage]

    def encoder_lr_scale(self, stage: int) -> float:
        return 0.0 if stage == 1 else self.config.backbone_lr_scale

    def group_lr_scales(self, stage: int) -> Dict[str, float]:
        """Multiplier of the scheduled LR for each optimizer group (``engine.training.optim``) in ``stage``:
        the pretrained encoder at ``--backbone-lr-scale`` (frozen in stage 1), the randomly
        initialised decoder and head at ``--decoder-lr-scale``."""
        return {"encoder": self.encoder_lr_scale(stage), "decoder": self.config.decoder_lr_scale}

    def unfrozen_encoder_stages(self, epoch_index: int, num_encoder_stages: int) -> int:
        """How many encoder stages (deepest first) train in ``epoch_index``."""
        if self.stage_of(epoch_index) == 1:
            return 0
        if not self.config.progressive_unfreeze:
            return num_encoder_stages
        epochs_in_stage2 = epoch_index - self.state.stage2_start
        return min(num_encoder_stages, 1 + epochs_in_stage2 // self.config.unfreeze_interval)

    def describe(self) -> list:
        """Human-readable plan lines (used by ``--dry-run`` and at start-up)."""
        lines = []
        for stage in (1, 2):
            start = 0 if stage == 1 else self.state.stage2_start
            end = self.stage_end(stage)
            origin = self.state.origins.get(stage, start)
            first_epoch = max(start, origin)
            if end <= first_epoch:  # no epoch of this stage is left (never "epochs 3-2")
                continue
            schedule = self.schedule(stage)
            lines.append(
                f"stage {stage}: epochs {first_epoch + 1}-{end}, batch {self.batch_size(stage)} x accumulation "
                f"{self.config.accumulation_steps}, {self.steps_per_epoch(stage)} optimizer steps/epoch, "
                f"{schedule.kind} LR {self.lr_at(first_epoch, 0):.3g} -> {schedule.base_lr:.3g} (peak) -> "
                f"{self.lr_at(end - 1, self.steps_per_epoch(stage) - 1):.3g}"
                + (f", plateau LR scale x{self.lr_scale(stage):.3g}" if self.lr_scale(stage) != 1.0 else "")
                + (f", decoder LR x{self.config.decoder_lr_scale:g}" if self.config.decoder_lr_scale != 1.0 else "")
                + (", encoder frozen" if stage == 1 else
                   f", encoder LR x{self.config.backbone_lr_scale}"
                   + (f", unfreezing deepest-first every {self.config.unfreeze_interval} epochs"
                      if self.config.progressive_unfreeze else ""))
            )
        return lines


def check_epochs_left(completed_epochs: int, config: TrainConfig, source: str) -> None:
    """Refuse a resume that would train nothing: the checkpoint ``source`` already completed
    ``--epochs`` (a phase-2 or plateau run resuming a ``best_model.pth`` saved at its run's last
    epoch). Without this the run validates nothing, writes no ``best_model.pth`` and reports
    "Done"; the fix is a larger ``--epochs`` (the total, counted from the first epoch of the run).

    Raises:
        ConfigError: no epoch is left, naming an ``--epochs`` that trains about a quarter more.
    """
    if completed_epochs < config.epochs:
        return
    more = max(1, round(completed_epochs / 4))
    where = (f"epoch {completed_epochs} of {config.epochs}" if completed_epochs == config.epochs
             else f"epoch {completed_epochs}, past --epochs {config.epochs}")
    raise ConfigError(f"{source} is from {where}, so this run would train nothing: pass --epochs "
                      f"{completed_epochs + more} to train {more} more (--epochs counts from the run's first epoch)")
