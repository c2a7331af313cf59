"""Post-epoch evaluator: improvement rate, train/val gap, plateau and first-epoch LR sanity.

``analyse_history`` is the pure rule set (tested on the source notes' scenarios); the callback
feeds it the epoch records, prints the report, writes ``evaluation/*`` to TensorBoard, stores the
findings under ``record["health"]`` (so ``metrics.jsonl`` keeps them) and, with
``auto_adjust_lr``, halves the current stage's LR on a plateau through the plan
(``StagePlan.scale_lr``; never below the min LR).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from engine.config import parse_epoch_selection
from engine.training.callback import Callback, Order, StepOutput, is_main_process

logger = logging.getLogger(__name__)


@dataclass
class EpochStats:
    """One epoch as the evaluator sees it (``train_loss`` / ``val_iou`` may be unknown).

    ``train_loss`` is the training loss comparable to ``val_loss``: the structure loss of the main
    prediction, without the side-supervision and balance terms that only training adds.
    """

    epoch: int
    val_loss: float
    train_loss: Optional[float] = None
    val_iou: Optional[float] = None
    image_blind_iou: Optional[float] = None  # the best IoU of one fixed mask (evaluation/mask_prior.py)


# Val IoU must beat the image-blind bar by this much (absolute) in one of the last NO_SIGNAL_EPOCHS
# epochs to count as learning from the images. Measured on synthetic runs from random weights
# (benchmarks/monitor_alarms.py): healthy seeds sat at the bar for up to 2 epochs before rising;
# shuffled masks and a 1000x too low LR stayed 0.06-0.26 below it.
NO_SIGNAL_MARGIN = 0.02
NO_SIGNAL_EPOCHS = 3
STRUCTURE_TERM = "structure_raw"  # the loss term that validation also measures (engine/training/losses.py)
TAIL_FRACTION = 0.25  # an LR at or below this share of its stage's peak, and decaying: the schedule's tail


@dataclass
class ScheduleContext:
    """Where the LR schedule stands at the end of the judged epoch (advice depends on it).

    Attributes:
        stage: 1 (encoder frozen) or 2.
        lr_flag: the flag that sets this stage's LR: ``--lr`` in stage 1, ``--stage2-lr`` in stage 2
            (``--lr`` only re-plans stage 1, so advising it in stage 2 would change nothing or
            raise the LR).
        lr: the LR of the epoch's last update.
        peak_lr: the stage's scheduled peak (times a plateau LR scale).
        min_lr: ``--min-lr``.
        decaying: the schedule decays (cosine, warmup-constant-cosine), unlike ``constant``.
        epoch1_all_warmup: epoch 1 was mostly LR warmup (``--warmup-epochs`` >= 0.5), so its loss
            change says little about the LR.
    """

    stage: int = 1
    lr_flag: str = "--lr"
    lr: Optional[float] = None
    peak_lr: Optional[float] = None
    min_lr: float = 0.0
    decaying: bool = True
    epoch1_all_warmup: bool = False

    @property
    def at_min_lr(self) -> bool:
        return self.lr is not None and self.lr <= self.min_lr * 1.05 + 1e-12

    @property
    def in_tail(self) -> bool:
        """The decay is nearly done: slow improvement is expected, not a problem."""
        return (self.decaying and self.lr is not None and self.peak_lr is not None
                and self.lr <= TAIL_FRACTION * self.peak_lr)

    def lower_lr_advice(self) -> str:
        """The flags that lower this stage's LR to half of today's, when resuming."""
        return f"resume with {self.lr_flag} {self.lr / 2:.3g} (half of the current {self.lr:.3g})"


def schedule_context(plan, epoch_index: int, warmup_epochs: float) -> ScheduleContext:
    """``ScheduleContext`` of the 0-based ``epoch_index`` from the run's ``StagePlan``."""
    stage = plan.stage_of(epoch_index)
    lr = plan.lr_at(epoch_index, plan.steps_per_epoch(stage) - 1)
    schedule = plan.schedule(stage)
    return ScheduleContext(stage, "--lr" if stage == 1 else "--stage2-lr", lr, schedule.base_lr * plan.lr_scale(stage),
                           schedule.min_lr, schedule.kind != "constant", warmup_epochs >= 0.5)


def _usable(*values: Optional[float]) -> bool:
    return all(value is not None and math.isfinite(value) for value in values)


def grade_improvement(rate_pct: float) -> str:
    """``< 1 %`` poor, ``1-5 %`` acceptable, ``> 5 %`` good (relative improvement per epoch)."""
    return "poor" if rate_pct < 1.0 else "acceptable" if rate_pct <= 5.0 else "good"


def grade_gap(gap_pct: float) -> str:
    """``(val - train) / train``: ``< 10 %`` healthy, ``10-30 %`` mild, ``> 30 %`` severe overfitting."""
    return "healthy" if gap_pct < 10.0 else "mild" if gap_pct <= 30.0 else "severe"


def _rates(values: Sequence[Optional[float]], lower_is_better: bool) -> List[float]:
    """Percent improvement of each value over the one before (the last up to 2), where both are usable."""
    rates = []
    for before, after in zip(values, values[1:]):
        if not _usable(before, after) or before <= 0:
            rates = []
            continue
        rates.append(100.0 * ((before - after) if lower_is_better else (after - before)) / before)
    return rates


def _plateaued(values: List[float], epochs: int, tolerance: float, lower_is_better: bool) -> Optional[bool]:
    """Best of the last ``epochs`` values improved on the best before them by less than ``tolerance``."""
    values = [v if lower_is_better else -v for v in values]
    if len(values) <= epochs or not _usable(*values):
        return None
    before, recent = min(values[:-epochs]), min(values[-epochs:])
    return (before - recent) / max(abs(before), 1e-12) < tolerance


def analyse_history(history: Sequence[EpochStats], plateau_epochs: int = 3,
                    plateau_tolerance: float = 0.01, context: Optional[ScheduleContext] = None) -> Dict[str, Any]:
    """Diagnose training health at the last epoch of ``history``.

    Args:
        history: epochs in order, the newest last.
        plateau_epochs: epochs over which a plateau is judged.
        plateau_tolerance: relative improvement below which those epochs count as a plateau.
        context: the schedule at that epoch; slow progress in the cosine tail or at ``--min-lr`` is
            expected (no plateau, no underfitting, no LR-lowering advice), and advice names the
            flag of the current stage. None: stage 1, mid-schedule.

    Returns:
        A JSON-serialisable dict: ``improvement_rate`` / ``iou_improvement_rate`` (percent, vs the
        previous epoch) with their grades, ``train_val_gap`` (percent) and ``gap`` grade,
        ``plateau`` (bool), ``issues`` and ``suggestions`` (lists of sentences).
    """
    context = context or ScheduleContext()
    last = history[-1]
    health: Dict[str, Any] = {"epoch": last.epoch, "plateau": False, "issues": [], "suggestions": [], "notes": []}
    issues, suggestions = health["issues"], health["suggestions"]
    slow_is_expected = context.in_tail or context.at_min_lr
    previous = history[-2] if len(history) > 1 else None
    # One slow epoch is validation noise on a healthy run (measured: a 40-image validation set moved
    # val IoU by -20 % to -38 % for one epoch and recovered); an issue needs two in a row.
    loss_rates = _rates([h.val_loss for h in history[-3:]], lower_is_better=True)
    iou_rates = _rates([h.val_iou for h in history[-3:]], lower_is_better=False)
    # Val IoU still rising >= 1 % is learning, whatever the loss did (measured: a healthy run's val loss
    # jumped +9 % for one epoch and recovered only 0.7 % while its val IoU went 0.25 -> 0.45).
    iou_rising = bool(iou_rates) and iou_rates[-1] >= 1.0
    if loss_rates:
        rate = loss_rates[-1]
        health.update(improvement_rate=round(rate, 4), improvement=grade_improvement(rate))
        if len(loss_rates) == 2 and max(loss_rates) < 1.0 and not slow_is_expected and not iou_rising:
            issues.append(f"slow improvement for 2 epochs: val loss {history[-3].val_loss:.4f} -> "
                          f"{previous.val_loss:.4f} -> {last.val_loss:.4f} ({loss_rates[0]:+.2f} %, {rate:+.2f} %, "
                          "below 1 % each)")
    if iou_rates:
        rate = iou_rates[-1]
        health.update(iou_improvement_rate=round(rate, 4), iou_improvement=grade_improvement(rate))
        if len(iou_rates) == 2 and max(iou_rates) < 1.0 and not slow_is_expected:
            issues.append(f"slow IoU progress for 2 epochs: val IoU {history[-3].val_iou:.4f} -> "
                          f"{previous.val_iou:.4f} -> {last.val_iou:.4f} ({iou_rates[0]:+.2f} %, {rate:+.2f} %)")
    if _usable(last.train_loss, last.val_loss) and last.train_loss > 0:
        gap = 100.0 * (last.val_loss - last.train_loss) / last.train_loss
        health.update(train_val_gap=round(gap, 4), gap=grade_gap(gap))
        if gap > 30.0:
            issues.append(f"severe overfitting: train/val gap {gap:.1f} % (train {last.train_loss:.4f}, "
                          f"val {last.val_loss:.4f})")
            suggestions.append("regularise: stronger augmentation, more weight decay (e.g. --weight-decay 0.05), "
                               "weight EMA (--use-ema); keep best_model.pth rather than the last weights")
        elif gap > 10.0:
            issues.append(f"mild overfitting: train/val gap {gap:.1f} %")
            suggestions.append("watch the gap; weight EMA (--use-ema) or more weight decay usually help")
    _add_no_signal(health, history)
    _add_plateau(health, history, plateau_epochs, plateau_tolerance, context)
    if not slow_is_expected:
        _add_capacity(health, history, plateau_epochs)
    if context.at_min_lr:
        health["notes"].append(f"the LR is at --min-lr ({context.min_lr:.3g}): the schedule has finished its decay, "
                               "so progress is slow by design")
        if health.get("improvement") == "poor":
            suggestions.append("the run has converged at this LR: stop here (best_model.pth holds the best epoch) or "
                               f"warm-restart with a higher {context.lr_flag} (see the plateau guide)")
    elif context.in_tail:
        health["notes"].append(f"the LR is in its schedule's tail ({context.lr:.3g}, {context.lr / context.peak_lr:.0%} "
                               "of the stage's peak): slow improvement is expected there")
    elif health.get("improvement") == "poor" and not suggestions and context.lr is not None:
        suggestions.append(f"if the next epochs stay below 1 %, lower the LR: {context.lower_lr_advice()}, "
                           "or enable --auto-adjust-lr")
    return health


def _add_no_signal(health: Dict[str, Any], history: Sequence[EpochStats]) -> None:
    """Val IoU no better than one fixed mask for every image, epochs in a row: nothing learnt from the images."""
    recent = history[-NO_SIGNAL_EPOCHS:]
    bar = history[-1].image_blind_iou
    if len(recent) < NO_SIGNAL_EPOCHS or not _usable(bar, *(epoch.val_iou for epoch in recent)):
        return
    if max(epoch.val_iou for epoch in recent) >= bar + NO_SIGNAL_MARGIN:
        return
    ious = ", ".join(f"{epoch.val_iou:.4f}" for epoch in recent)
    health["issues"].append(
        f"no signal from the images: val IoU stayed below {bar + NO_SIGNAL_MARGIN:.4f} for {len(recent)} epochs "
        f"({ious}), while one fixed mask for every image (the validation set's mean mask) scores {bar:.4f}: the "
        "model has learnt where objects usually are, not what they look like")
    health["suggestions"].append(
        "check that each mask belongs to its image (the same file stem in the image and mask folders, none "
        "shifted, renamed or from another dataset: open a few pairs side by side); an LR far too low looks the "
        "same, see the epoch-1 LR check")


def _add_plateau(health: Dict[str, Any], history: Sequence[EpochStats], epochs: int, tolerance: float,
                 context: ScheduleContext) -> None:
    loss_plateau = _plateaued([h.val_loss for h in history], epochs, tolerance, lower_is_better=True)
    ious = [h.val_iou for h in history]
    iou_plateau = _plateaued(ious, epochs, tolerance, lower_is_better=False) if _usable(*ious) else None
    # The IoU still rising means the model still learns, whatever the loss says; a flat loss in the
    # schedule's tail or at --min-lr is what the schedule does, not a plateau to break.
    flat = bool(loss_plateau) and iou_plateau is not False
    health["plateau"] = flat and not (context.in_tail or context.at_min_lr)
    if health["plateau"]:
        health["issues"].append(f"plateau: val loss improved < {tolerance:.0%} over the last {epochs} epochs")
        lower = f" or {context.lower_lr_advice()}" if context.lr is not None else ""
        health["suggestions"].append(f"break the plateau: halve the LR (--auto-adjust-lr does it automatically{lower}) "
                                     f"or warm-restart with a new {context.lr_flag} / --scheduler; see the plateau guide")


def _add_capacity(health: Dict[str, Any], history: Sequence[EpochStats], epochs: int) -> None:
    """Small gap + slow but steady progress: the model fits train and val alike, slowly => capacity."""
    recent = history[-(epochs + 1):]
    steady = len(recent) > epochs and all(_usable(a.val_loss, b.val_loss) and b.val_loss < a.val_loss
                                          for a, b in zip(recent, recent[1:]))
    iou_fast = health.get("iou_improvement") == "good"  # > 5 % a epoch in val IoU is not slow learning
    slow = health.get("improvement") in ("poor", "acceptable")
    if steady and slow and not iou_fast and health.get("gap") == "healthy":
        health["issues"].append(f"underfitting: train and val loss stay close (gap {health['train_val_gap']:.1f} %) "
                                f"while falling slowly ({health['improvement_rate']:.1f} % per epoch)")
        health["suggestions"].append("add capacity: a larger backbone, more experts (--num-experts) or a wider "
                                     "decoder (--decoder-channels); or raise the LR / train longer")


def first_epoch_lr_check(start_loss: float, end_loss: float, peak_loss: float,
                         all_warmup: bool = False) -> Dict[str, Any]:
    """LR sanity from the first epoch: mean loss of its first and last tenth, and its peak.

    ``all_warmup``: the LR rose from almost 0 during most of the epoch, so a loss that barely moved
    says nothing about the LR yet (verdict ``warmup``, not an issue); a spike still means too high.

    Returns:
        ``{"verdict": "ok" | "too_low" | "too_high" | "warmup", "loss_change": percent, "message": str}``.
    """
    change = 100.0 * (start_loss - end_loss) / start_loss if _usable(start_loss, end_loss) and start_loss > 0 else None
    if change is None or not _usable(peak_loss) or peak_loss > 1.5 * start_loss or change < -5.0:
        verdict, message = "too_high", ("the loss spiked or rose in epoch 1: the LR is probably too high; "
                                        "halve --lr or lengthen --warmup-epochs")
    elif change < 2.0 and all_warmup:
        verdict, message = "warmup", (f"the loss moved {change:.1f} % in epoch 1, which was mostly LR warmup: too "
                                      "early to judge the LR")
    elif change < 2.0:
        verdict, message = "too_low", (f"the loss barely moved in epoch 1 ({change:.1f} %): the LR may be too "
                                       "low; try 2-3x --lr")
    else:
        verdict, message = "ok", f"the loss fell {change:.1f} % during epoch 1"
    return {"verdict": verdict, "loss_change": None if change is None else round(change, 4), "message": message}


class PostEpochEvaluator(Callback):
    """Runs ``analyse_history`` at the selected epochs and the LR sanity check after epoch 1.

    It runs before the logging callback (``Order.DIAGNOSIS``): it adds ``record["health"]``,
    which that callback writes to ``metrics.jsonl``.

    Args:
        epochs: epoch selection (``--eval-epochs``), default ``"2+"`` = every epoch from 2 on.
        auto_adjust_lr: halve the current stage's LR on a plateau (``--auto-adjust-lr``), through
            the plan; at most once per ``plateau_epochs`` epochs.
        min_lr: the LR is never lowered below this (``--min-lr``).
        plateau_epochs, plateau_tolerance: see ``analyse_history``.
        warmup_epochs: ``--warmup-epochs`` (the epoch-1 check does not judge an all-warmup epoch).
    """

    name = "post_epoch"
    order = Order.DIAGNOSIS

    def __init__(self, epochs: str = "2+", auto_adjust_lr: bool = False, min_lr: float = 0.0,
                 plateau_epochs: int = 3, plateau_tolerance: float = 0.01, warmup_epochs: float = 0.0):
        self.selected = parse_epoch_selection(epochs)
        self.warmup_epochs = warmup_epochs
        self.auto_adjust_lr, self.min_lr = auto_adjust_lr, min_lr
        self.plateau_epochs, self.plateau_tolerance = plateau_epochs, plateau_tolerance
        self.history: List[EpochStats] = []
        self.adjusted_at_epoch = 0
        self._first_epoch: Optional[torch.Tensor] = None  # device [sum first tenth, sum last tenth, peak]
        self._tenth = 1
        # The epoch's structure-loss term (device sum, host count): the train loss the gap compares
        # with the val loss. The total adds side supervision (0.5 x the side losses by default); it
        # put the "gap" at -33 % to -36 % on healthy runs, which hid every overfitting.
        self._structure_sum: Optional[torch.Tensor] = None
        self._structure_updates = 0

    def on_optimizer_step(self, trainer, step: StepOutput) -> None:
        """Sum the structure term (one add), and track the first epoch's early / late / peak loss on
        the device (3 tiny ops, epoch 1 only)."""
        if step.loss_terms is not None and STRUCTURE_TERM in step.loss_term_names:
            term = step.loss_terms[step.loss_term_names.index(STRUCTURE_TERM)].detach()
            self._structure_sum = term if self._structure_sum is None else self._structure_sum + term
            self._structure_updates += 1
        if trainer.epoch != 0 or step.steps_in_epoch < 4:
            return
        loss = step.loss.detach().float().reshape(())
        if step.step_in_epoch == 1:
            self._tenth = max(1, step.steps_in_epoch // 10)
            self._first_epoch = torch.stack([torch.zeros_like(loss), torch.zeros_like(loss), loss])
        if self._first_epoch is None:  # resumed in the middle of epoch 1: not judged
            return
        early = float(step.step_in_epoch <= self._tenth)
        late = float(step.step_in_epoch > step.steps_in_epoch - self._tenth)
        self._first_epoch = torch.stack([self._first_epoch[0] + early * loss, self._first_epoch[1] + late * loss,
                                         torch.maximum(self._first_epoch[2], loss)])

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        if self._structure_updates:  # after a mid-epoch resume: the mean of the updates since then
            record["train_structure_loss"] = float(self._structure_sum) / self._structure_updates
        self._structure_sum, self._structure_updates = None, 0
        train_loss = record.get("train_structure_loss", record.get("train_loss"))
        self.history.append(EpochStats(record["epoch"], record["val_loss"], train_loss,
                                       record.get("val_iou"), record.get("val_image_blind_iou")))
        health: Dict[str, Any] = {}
        context = schedule_context(trainer.plan, record["epoch"] - 1, self.warmup_epochs)
        if record["epoch"] == 1 and self._first_epoch is not None:
            start, end, peak = self._first_epoch.tolist()
            health["lr_sanity"] = first_epoch_lr_check(start / self._tenth, end / self._tenth, peak,
                                                       context.epoch1_all_warmup)
            self._first_epoch = None
        if self.selected(record["epoch"]) and len(self.history) > 1:
            health.update(analyse_history(self.history, self.plateau_epochs, self.plateau_tolerance, context))
            self._write(trainer, health, record["global_step"])
            if self.auto_adjust_lr and health["plateau"]:
                self._halve_lr(trainer, health, record["epoch"])
        if health.get("lr_sanity", {}).get("verdict", "ok") in ("too_low", "too_high"):
            health.setdefault("issues", []).append(health["lr_sanity"]["message"])
        if health:
            record["health"] = health
            if is_main_process(trainer):
                _report(record["epoch"], health)

    def _write(self, trainer, health: Dict[str, Any], step: int) -> None:
        for key in ("improvement_rate", "iou_improvement_rate", "train_val_gap"):
            if health.get(key) is not None:
                trainer.log_scalar(f"evaluation/{key}", health[key], step)
        trainer.log_scalar("evaluation/plateau_detected", float(health["plateau"]), step)

    def _halve_lr(self, trainer, health: Dict[str, Any], epoch: int) -> None:
        if self.adjusted_at_epoch and epoch - self.adjusted_at_epoch < self.plateau_epochs:
            return  # give the previous halving time to show
        current = trainer.current_lr
        if current * 0.5 < self.min_lr:
            health["lr_adjustment"] = f"not halved: the LR {current:.3g} is already near --min-lr {self.min_lr:.3g}"
            return
        scale = trainer.plan.scale_lr(trainer.stage, 0.5)
        self.adjusted_at_epoch = epoch
        health["lr_adjustment"] = (f"LR halved on plateau: {current:.3g} -> {current * 0.5:.3g} (stage "
                                   f"{trainer.stage} LR scale x{scale:.3g}, kept in the plan)")

    def state_dict(self) -> Dict[str, Any]:
        return {"history": [asdict(h) for h in self.history], "adjusted_at_epoch": self.adjusted_at_epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.history = [EpochStats(**h) for h in state.get("history", [])]
        self.adjusted_at_epoch = int(state.get("adjusted_at_epoch", 0))


def _report(epoch: int, health: Dict[str, Any]) -> None:
    """Print the findings: one summary line, then one line per issue and suggestion."""
    parts = [f"{key.replace('_', ' ')} {health[key]:+.2f} % ({health[grade]})" for key, grade in
             (("improvement_rate", "improvement"), ("iou_improvement_rate", "iou_improvement"),
              ("train_val_gap", "gap")) if key in health]
    if health.get("lr_sanity", {}).get("verdict") in ("ok", "warmup"):
        parts.append(f"epoch-1 LR check: {health['lr_sanity']['message']}")
    logger.info("Health after epoch %d: %s%s", epoch, "; ".join(parts) or "no comparison yet",
                " | plateau" if health.get("plateau") else "")
    for issue in health.get("issues", []):
        logger.warning("  issue: %s", issue)
    for suggestion in health.get("suggestions", []):
        logger.info("  suggestion: %s", suggestion)
    for note in health.get("notes", []):
        logger.info("  note: %s", note)
    if "lr_adjustment" in health:
        logger.info("  %s", health["lr_adjustment"])
