"""Post-epoch health report: the callback that feeds the rules of ``health_rules.py``.

After each selected epoch it keeps the base weights' per-image validation scores
(``trainer.val_per_image``), judges them with ``analyse_history`` at the run's false-alarm budget,
prints the report, writes ``evaluation/*`` to TensorBoard and stores the findings under
``record["health"]`` (so ``metrics.jsonl`` keeps them). It only observes: ``--auto-adjust-lr`` acts on
a plateau finding in ``engine/callbacks/plateau_lr.py``. After epoch 1 it runs the LR check of
``lr_check.py`` on that epoch's step losses.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Dict, List, Optional

import torch

from engine.config import parse_epoch_selection
from engine.monitors.health_rules import RULE_TESTS, EpochStats, analyse_history, schedule_context
from engine.monitors.lr_check import first_epoch_lr_check, tenth_of
from engine.monitors.paired_evidence import FalseAlarmBudget
from engine.training.callback import Callback, Order, StepOutput, is_main_process

logger = logging.getLogger(__name__)

STRUCTURE_TERM = "structure_raw"  # the loss term that validation also measures (engine/training/losses.py)
LR_CHECK_TESTS = 2  # the epoch-1 check's two one-sided tests (rose, barely moved)


def judged_epoch_count(epochs: str, total_epochs: int) -> int:
    """How many epochs the rules judge: the selected ones from epoch 2 on."""
    selected = parse_epoch_selection(epochs)
    return sum(1 for epoch in range(2, total_epochs + 1) if selected(epoch))


def false_alarm_budget(epochs: str, total_epochs: int) -> FalseAlarmBudget:
    """The run's budget: ``RULE_TESTS`` per judged epoch plus the epoch-1 check."""
    return FalseAlarmBudget(RULE_TESTS * judged_epoch_count(epochs, total_epochs) + LR_CHECK_TESTS)


class PostEpochEvaluator(Callback):
    """Runs ``analyse_history`` at the selected epochs and the LR check after epoch 1.

    It runs before the logging callback (``Order.DIAGNOSIS``): it adds ``record["health"]``,
    which that callback writes to ``metrics.jsonl`` (and the plateau LR callback reads).

    Args:
        epochs: epoch selection (``--eval-epochs``), default ``"2+"`` = every epoch from 2 on.
        plateau_epochs, plateau_tolerance: see ``analyse_history``.
        warmup_epochs: ``--warmup-epochs`` (the epoch-1 check does not judge an all-warmup epoch).
        total_epochs: the run's ``--epochs``: with the selection, the number of tests the
            false-alarm budget is split over.
    """

    name = "post_epoch"
    order = Order.DIAGNOSIS

    def __init__(self, epochs: str = "2+", plateau_epochs: int = 3, plateau_tolerance: float = 0.01,
                 warmup_epochs: float = 0.0, total_epochs: int = 10):
        self.selected = parse_epoch_selection(epochs)
        self.budget = false_alarm_budget(epochs, total_epochs)
        self.warmup_epochs = warmup_epochs
        self.plateau_epochs, self.plateau_tolerance = plateau_epochs, plateau_tolerance
        self.history: List[EpochStats] = []
        self.scores: Dict[int, torch.Tensor] = {}  # epoch -> (N, 2) per-image scores of the base weights
        # Epoch 1's step losses of its first and last tenth, written in place on the device (no sync).
        self._first_epoch: Optional[torch.Tensor] = None
        self._tenth = 0
        # The epoch's structure-loss term (device sum, host count): the train loss compared with the
        # val loss. The total adds side supervision (0.5 x the side losses by default), which would
        # make every run look as if validation were easier than training.
        self._structure_sum: Optional[torch.Tensor] = None
        self._structure_updates = 0

    def on_train_start(self, trainer) -> None:
        if is_main_process(trainer):
            logger.info("Health report: %s", self.budget.describe())

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        """Sum the structure term (one add); in epoch 1, keep the step losses of its first and last tenth."""
        if step.loss_terms is not None and STRUCTURE_TERM in step.loss_term_names:
            term = step.loss_terms[step.loss_term_names.index(STRUCTURE_TERM)].detach()
            self._structure_sum = term if self._structure_sum is None else self._structure_sum + term
            self._structure_updates += 1
        if trainer.epoch != 0:
            return
        if step.step_in_epoch == 1:
            self._tenth = tenth_of(step.steps_in_epoch)
            self._first_epoch = torch.zeros(2, max(self._tenth, 1), device=step.loss.device) if self._tenth else None
        if self._first_epoch is None:  # too short an epoch, or resumed mid-epoch 1 from an older checkpoint
            return
        if self._first_epoch.device != step.loss.device:  # restored from a checkpoint, on the CPU
            self._first_epoch = self._first_epoch.to(step.loss.device)
        from_end = step.steps_in_epoch - step.step_in_epoch
        if step.step_in_epoch <= self._tenth:
            self._first_epoch[0, step.step_in_epoch - 1] = step.loss.detach().float().reshape(())
        elif from_end < self._tenth:
            self._first_epoch[1, from_end] = step.loss.detach().float().reshape(())

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        if self._structure_updates:  # after a mid-epoch resume: the mean of the updates since then
            record["train_structure_loss"] = float(self._structure_sum) / self._structure_updates
        self._structure_sum, self._structure_updates = None, 0
        train_loss = record.get("train_structure_loss", record.get("train_loss"))
        self.history.append(EpochStats(record["epoch"], record["val_loss"], train_loss, record.get("val_iou"),
                                       record.get("val_image_blind_iou"), record.get("val_iou_ema")))
        if getattr(trainer, "val_per_image", None) is not None:
            table = trainer.val_per_image.detach().float().cpu().clone()
            if any(old.shape != table.shape for old in self.scores.values()):
                self.scores.clear()  # another validation set (e.g. resumed on other roots): nothing to pair with
            self.scores[record["epoch"]] = table
        health: Dict[str, Any] = {}
        context = schedule_context(trainer.plan, record["epoch"] - 1, self.warmup_epochs)
        if record["epoch"] == 1 and self._first_epoch is not None:
            early, late = self._first_epoch.cpu()
            health["lr_sanity"] = first_epoch_lr_check(early, late, self.budget.z, context.epoch1_all_warmup)
            self._first_epoch = None
        if self.selected(record["epoch"]) and len(self.history) > 1:
            health.update(analyse_history(self.history, self.scores, context, self.budget, self.plateau_epochs,
                                          self.plateau_tolerance))
            self._write(trainer, health, record["global_step"])
        if health.get("lr_sanity", {}).get("verdict", "ok") in ("too_low", "too_high"):
            health.setdefault("issues", []).append(health["lr_sanity"]["message"])
        if health:
            record["health"] = health
            if is_main_process(trainer):
                _report(self.history[-1], health)

    def _write(self, trainer, health: Dict[str, Any], step: int) -> None:
        for key in ("improvement_rate", "iou_improvement_rate", "train_val_gap"):
            if health.get(key) is not None:
                trainer.log_scalar(f"evaluation/{key}", health[key], step)
        trainer.log_scalar("evaluation/plateau_detected", float(health["plateau"]), step)

    def state_dict(self) -> Dict[str, Any]:
        epochs = sorted(self.scores)
        # The running epoch's partial sums too: a run stopped mid-epoch reports the same epoch as one never stopped.
        running = {"structure_sum": None if self._structure_sum is None else self._structure_sum.detach().cpu(),
                   "structure_updates": self._structure_updates, "tenth": self._tenth,
                   "first_epoch": None if self._first_epoch is None else self._first_epoch.detach().cpu()}
        return {"history": [asdict(h) for h in self.history], "score_epochs": epochs,
                "scores": torch.stack([self.scores[e] for e in epochs]) if epochs else torch.zeros(0),
                "running_epoch": running}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """A checkpoint from before the per-image scores has only epoch means: the paired rules
        then start with the epochs after the resume."""
        self.history = [EpochStats(**h) for h in state.get("history", [])]
        epochs, scores = state.get("score_epochs", []), state.get("scores")
        self.scores = {int(epoch): scores[index].float() for index, epoch in enumerate(epochs)}
        # Older checkpoints have no running sums: the epoch's sums then restart at the resume point.
        running = state.get("running_epoch") or {}
        self._structure_sum, self._first_epoch = running.get("structure_sum"), running.get("first_epoch")
        self._structure_updates, self._tenth = int(running.get("structure_updates", 0)), int(running.get("tenth", 0))


def _report(last: EpochStats, health: Dict[str, Any]) -> None:
    """Print the findings: one summary line, then one line per issue, suggestion and note."""
    parts = []
    if last.val_iou is not None:
        ema = f" (EMA {last.val_iou_ema:.4f})" if last.val_iou_ema is not None else ""
        parts.append(f"val IoU {last.val_iou:.4f}{ema}")
    parts += [f"{key.replace('_', ' ')} {health[key]:+.2f} % ({health[grade]})" for key, grade in
              (("improvement_rate", "improvement"), ("iou_improvement_rate", "iou_improvement"),
               ("train_val_gap", "gap")) if key in health]
    if health.get("lr_sanity", {}).get("verdict") in ("ok", "warmup"):
        parts.append(f"epoch-1 LR check: {health['lr_sanity']['message']}")
    verdict = "issues below" if health.get("issues") else "no change beyond the validation noise"
    logger.info("Health after epoch %d: %s | %s", last.epoch, "; ".join(parts) or "no comparison yet", verdict)
    for issue in health.get("issues", []):
        logger.warning("  issue: %s", issue)
    for suggestion in health.get("suggestions", []):
        logger.info("  suggestion: %s", suggestion)
    for note in health.get("notes", []):
        logger.info("  note: %s", note)
