"""The health report's rules: what an epoch's validation scores are evidence of.

Every issue rests on paired per-image differences between epochs (``paired_evidence.py``) and
passes a critical ``z`` that holds the false alarms of a whole run within a stated budget:

- **val IoU fell**: the best IoU of the last ``RECENT_EPOCHS`` epochs is significantly below the
  best before them (two epochs, so a one-epoch dip of a healthy run does not count);
- **val loss rising**: the lowest val loss of the last ``RECENT_EPOCHS`` epochs is significantly
  above the lowest before them; with the training loss falling that is overfitting, with it
  rising the optimisation itself is getting worse;
- **plateau**: even the upper confidence bound of the improvement over the last ``plateau_epochs``
  epochs is below ``plateau_tolerance`` of the best before them, in IoU and in loss alike, while
  the LR is neither in its schedule's tail nor at ``--min-lr`` (slow there by design);
- **no signal**: val IoU within ``NO_SIGNAL_MARGIN`` of one fixed mask for every image for
  ``NO_SIGNAL_EPOCHS`` epochs (``mask_prior.py``; judged on means, the bar is far from the noise);
  sooner, from the second epoch on, when even the best epoch so far is significantly *below* that
  fixed mask (a model worse than ignoring the images: masks that do not match, an LR far off); its
  test at epoch ``EARLY_NO_SIGNAL_EPOCH`` spends the budget's early share (``early_z``).

SPEC section 8's grades (improvement < 1 / 1-5 / > 5 %, gap < 10 / 10-30 / > 30 %) still
describe each epoch in the log and in TensorBoard; they raise nothing by themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from engine.monitors.paired_evidence import MIN_IMAGES, FalseAlarmBudget, PairedDifference, paired_difference
from engine.training.validation import PER_IMAGE_SCORES

IOU, LOSS = PER_IMAGE_SCORES.index("iou"), PER_IMAGE_SCORES.index("loss")
RECENT_EPOCHS = 2  # a fall must last this many epochs: healthy runs dip for one (measured, see the guide)
RULE_TESTS = 4  # tests per judged epoch: IoU fell, val loss rising, plateau, below the image-blind bar
EARLY_NO_SIGNAL_EPOCH = 2  # the below-the-bar test of this epoch spends the budget's early share (early_z)
RULES = ("iou_fell", "overfitting", "val_loss_rising", "plateau", "no_signal")  # health["fired"] names
NO_SIGNAL_MARGIN = 0.02
NO_SIGNAL_EPOCHS = 3
_NO_SIGNAL_ADVICE = ("check that each mask belongs to its image (the same file stem in the image and mask folders, "
                     "none shifted, renamed or from another dataset: open a few pairs side by side); an LR far too "
                     "low or too high looks the same, see the epoch-1 LR check")
TAIL_FRACTION = 0.25  # an LR at or below this share of its stage's peak, and decaying: the schedule's tail


@dataclass
class EpochStats:
    """One epoch's means as the report sees them (any may be unknown).

    ``train_loss`` is the training loss comparable to ``val_loss``: the structure loss of the main
    prediction, without the side-supervision and balance terms that only training adds.
    """

    epoch: int
    val_loss: float
    train_loss: Optional[float] = None
    val_iou: Optional[float] = None
    image_blind_iou: Optional[float] = None  # the best IoU of one fixed mask (evaluation/mask_prior.py)
    val_iou_ema: Optional[float] = None  # reported beside the base weights, never judged


@dataclass
class ScheduleContext:
    """Where the LR schedule stands at the end of the judged epoch (advice depends on it).

    Attributes:
        stage: 1 (encoder frozen) or 2.
        lr_flag: the flag that sets this stage's LR: ``--lr`` in stage 1, ``--stage2-lr`` in stage 2.
        lr: the LR of the epoch's last update.
        peak_lr: the stage's scheduled peak (times a plateau LR scale).
        min_lr: ``--min-lr``.
        decaying: the schedule decays (cosine, warmup-constant-cosine), unlike ``constant``.
        epoch1_all_warmup: epoch 1 was mostly LR warmup (``--warmup-epochs`` >= 0.5).
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
        """The flags that lower this stage's LR to half of today's, when resuming (the flag alone
        when the LR is unknown)."""
        if self.lr is None:
            return f"lower {self.lr_flag}"
        return f"resume with {self.lr_flag} {self.lr / 2:.3g} (half of the current {self.lr:.3g})"


def schedule_context(plan, epoch_index: int, warmup_epochs: float) -> ScheduleContext:
    """``ScheduleContext`` of the 0-based ``epoch_index`` from the run's ``StagePlan``."""
    stage = plan.stage_of(epoch_index)
    lr = plan.lr_at(epoch_index, plan.steps_per_epoch(stage) - 1)
    schedule = plan.schedule(stage)
    return ScheduleContext(stage, "--lr" if stage == 1 else "--stage2-lr", lr, schedule.base_lr * plan.lr_scale(stage),
                           schedule.min_lr, schedule.kind != "constant", warmup_epochs >= 0.5)


def usable(*values: Optional[float]) -> bool:
    return all(value is not None and math.isfinite(value) for value in values)


def grade_improvement(rate_pct: float) -> str:
    """``< 1 %`` poor, ``1-5 %`` acceptable, ``> 5 %`` good (relative improvement per epoch)."""
    return "poor" if rate_pct < 1.0 else "acceptable" if rate_pct <= 5.0 else "good"


def grade_gap(gap_pct: float) -> str:
    """``(val - train) / train``: ``< 10 %`` healthy, ``10-30 %`` mild, ``> 30 %`` large."""
    return "healthy" if gap_pct < 10.0 else "mild" if gap_pct <= 30.0 else "severe"


def _relative_change(before: Optional[float], after: Optional[float], lower_is_better: bool) -> Optional[float]:
    if not usable(before, after) or before <= 0:
        return None
    return 100.0 * ((before - after) if lower_is_better else (after - before)) / before


def describe_epoch(history: Sequence[EpochStats]) -> Dict[str, Any]:
    """SPEC section 8's descriptions of the last epoch: changes vs the one before and the gap, graded."""
    last, previous = history[-1], (history[-2] if len(history) > 1 else None)
    described: Dict[str, Any] = {}
    if previous is not None:
        for key, grade, before, after, lower in (
                ("improvement_rate", "improvement", previous.val_loss, last.val_loss, True),
                ("iou_improvement_rate", "iou_improvement", previous.val_iou, last.val_iou, False)):
            rate = _relative_change(before, after, lower)
            if rate is not None:
                described.update({key: round(rate, 4), grade: grade_improvement(rate)})
    if usable(last.train_loss, last.val_loss) and last.train_loss > 0:
        gap = 100.0 * (last.val_loss - last.train_loss) / last.train_loss
        described.update(train_val_gap=round(gap, 4), gap=grade_gap(gap))
    return described


def _paired_epochs(history: Sequence[EpochStats], scores: Mapping[int, torch.Tensor]) -> List[EpochStats]:
    """The epochs whose per-image scores are known, on the same images as the last epoch's."""
    last = scores.get(history[-1].epoch)
    if last is None:
        return []
    return [h for h in history if h.epoch in scores and scores[h.epoch].shape == last.shape]


def _best_pair(epochs: List[EpochStats], recent: int, scores: Mapping[int, torch.Tensor], column: int,
               lower_is_better: bool) -> Optional[Tuple[EpochStats, EpochStats, PairedDifference]]:
    """The best epoch of the last ``recent`` against the best before them, and ``best recent - best before``."""
    if len(epochs) <= recent:
        return None

    def mean_score(h: EpochStats) -> float:
        value = float(scores[h.epoch][:, column].double().mean())
        return value if lower_is_better else -value

    before = min(epochs[:-recent], key=mean_score)
    after = min(epochs[-recent:], key=mean_score)
    return before, after, paired_difference(scores[after.epoch][:, column], scores[before.epoch][:, column])


def analyse_history(history: Sequence[EpochStats], scores: Optional[Mapping[int, torch.Tensor]] = None,
                    context: Optional[ScheduleContext] = None, budget: Optional[FalseAlarmBudget] = None,
                    plateau_epochs: int = 3, plateau_tolerance: float = 0.01) -> Dict[str, Any]:
    """Diagnose training health at the last epoch of ``history``.

    Args:
        history: epochs in order, the newest last.
        scores: epoch -> ``(N, 2)`` per-image scores of the base weights (columns
            ``PER_IMAGE_SCORES``); epochs without them (before a resume from an older checkpoint)
            take part in no paired test.
        context: the schedule at that epoch (None: stage 1, mid-schedule).
        budget: the run's false-alarm budget (None: one test per rule for 10 epochs).
        plateau_epochs, plateau_tolerance: a plateau is less than ``plateau_tolerance`` (relative)
            improvement over ``plateau_epochs`` epochs, with confidence.

    Returns:
        A JSON-serialisable dict: the descriptions of ``describe_epoch``, ``plateau`` (bool),
        ``evidence`` (each paired test: rule, epochs compared, mean, SE, images, z), ``fired``
        (the rules that raised an issue: ``RULES``), ``issues``, ``suggestions`` and ``notes``
        (lists of sentences).
    """
    scores, context = scores or {}, context or ScheduleContext()
    budget = budget or FalseAlarmBudget(RULE_TESTS * 10)
    health: Dict[str, Any] = {"epoch": history[-1].epoch, "plateau": False, "issues": [], "suggestions": [],
                              "notes": [], "evidence": [], "fired": []}
    health.update(describe_epoch(history))
    epochs = _paired_epochs(history, scores)
    images = scores[history[-1].epoch].shape[0] if epochs else 0
    if epochs and images < MIN_IMAGES:
        health["notes"].append(f"{images} validation images are too few to tell a change from noise: the report "
                               f"judges nothing below {MIN_IMAGES}")
    elif epochs:
        _add_iou_fall(health, epochs, scores, context, budget.z)
        _add_val_loss_rise(health, epochs, scores, context, budget.z)
        _add_plateau(health, epochs, scores, context, budget.z, plateau_epochs, plateau_tolerance)
        early = history[-1].epoch == EARLY_NO_SIGNAL_EPOCH
        _add_below_image_blind(health, epochs, scores, history[-1].image_blind_iou,
                               budget.early_z if early else budget.z)
    if "no_signal" not in health["fired"]:
        _add_no_signal(health, history)
    if context.at_min_lr:
        health["notes"].append(f"the LR is at --min-lr ({context.min_lr:.3g}): the schedule has finished its decay, "
                               "so progress is slow by design")
    elif context.in_tail:
        health["notes"].append(f"the LR is in its schedule's tail ({context.lr:.3g}, {context.lr / context.peak_lr:.0%} "
                               "of the stage's peak): slow improvement is expected there")
    return health


def _record(health: Dict[str, Any], rule: str, before: EpochStats, after: EpochStats, change: PairedDifference,
            z: float) -> None:
    health["evidence"].append({"rule": rule, "before_epoch": before.epoch, "after_epoch": after.epoch,
                               "mean": round(change.mean, 6), "se": round(change.se, 6), "images": change.images,
                               "z": round(change.z, 3) if math.isfinite(change.z) else change.z,
                               "critical_z": round(z, 3)})


def _recent_against_before(health, rule: str, epochs, scores, column: int, lower_is_better: bool, z: float):
    """``_best_pair`` over the last ``RECENT_EPOCHS`` epochs, its evidence recorded under ``rule``."""
    pair = _best_pair(epochs, RECENT_EPOCHS, scores, column, lower_is_better)
    if pair is not None:
        _record(health, rule, *pair, z)
    return pair


def _add_iou_fall(health, epochs, scores, context: ScheduleContext, z: float) -> None:
    pair = _recent_against_before(health, "iou_fell", epochs, scores, IOU, lower_is_better=False, z=z)
    if pair is None:
        return
    before, after, change = pair
    if change.z <= -z:
        health["fired"].append("iou_fell")
        health["issues"].append(
            f"val IoU fell: the best of the last {RECENT_EPOCHS} epochs (epoch {after.epoch}) is below epoch "
            f"{before.epoch} by {change.describe()}, z = {change.z:.1f} (beyond the noise: |z| >= {z:.2f})")
        advice = context.lower_lr_advice()
        health["suggestions"].append(f"the weights are getting worse: {advice}; best_model.pth keeps epoch "
                                     f"{before.epoch}'s weights (see the training-collapse guide)")


def _add_val_loss_rise(health, epochs, scores, context: ScheduleContext, z: float) -> None:
    pair = _recent_against_before(health, "val_loss_rose", epochs, scores, LOSS, lower_is_better=True, z=z)
    if pair is None:
        return
    before, after, change = pair
    if change.z < z:
        return
    last = epochs[-1]
    rise = f"the lowest val loss of the last {RECENT_EPOCHS} epochs (epoch {after.epoch}) is above epoch " \
           f"{before.epoch}'s by {change.describe()}, z = {change.z:.1f} (beyond the noise: z >= {z:.2f})"
    if usable(last.train_loss, before.train_loss) and last.train_loss < before.train_loss:
        health["fired"].append("overfitting")
        health["issues"].append(f"overfitting: {rise}, while the training loss fell "
                                f"({before.train_loss:.4f} -> {last.train_loss:.4f})")
        health["suggestions"].append("regularise: more data or stronger augmentation, more weight decay "
                                     "(e.g. --weight-decay 0.05), weight EMA (--use-ema), or fewer epochs; "
                                     "best_model.pth keeps the best epoch")
    else:
        trend = "" if not usable(last.train_loss, before.train_loss) else \
            f" and the training loss did not fall ({before.train_loss:.4f} -> {last.train_loss:.4f})"
        health["fired"].append("val_loss_rising")
        health["issues"].append(f"val loss rising: {rise}{trend}")
        advice = context.lower_lr_advice()
        health["suggestions"].append(f"the optimisation is getting worse, not only the fit to the training set: "
                                     f"{advice}")


def _add_plateau(health, epochs, scores, context: ScheduleContext, z: float, window: int, tolerance: float) -> None:
    iou_pair = _best_pair(epochs, window, scores, IOU, lower_is_better=False)
    loss_pair = _best_pair(epochs, window, scores, LOSS, lower_is_better=True)
    if iou_pair is None or loss_pair is None or context.in_tail or context.at_min_lr:
        return
    (iou_before, _, iou_gain), (loss_before, _, loss_change) = iou_pair, loss_pair
    iou_reference = float(scores[iou_before.epoch][:, IOU].double().mean())
    loss_reference = float(scores[loss_before.epoch][:, LOSS].double().mean())
    loss_gain = PairedDifference(-loss_change.mean, loss_change.se, loss_change.images)
    # Both upper bounds below the tolerance: with confidence, neither score improved enough to matter.
    flat = (iou_gain.upper(z) < tolerance * abs(iou_reference)
            and loss_gain.upper(z) < tolerance * abs(loss_reference))
    _record(health, "plateau_iou", iou_before, iou_pair[1], iou_gain, z)
    if not flat:
        return
    health["plateau"] = True
    health["fired"].append("plateau")
    health["issues"].append(
        f"plateau: over the last {window} epochs val IoU changed {iou_gain.describe()} and val loss "
        f"{loss_gain.describe()} (as improvements); even their upper bounds at z = {z:.2f} are below "
        f"{tolerance:.0%} of the best before")
    lower = f" or {context.lower_lr_advice()}" if context.lr is not None else ""
    health["suggestions"].append(f"break the plateau: halve the LR (--auto-adjust-lr does it automatically{lower}) "
                                 f"or warm-restart with a new {context.lr_flag} / --scheduler; see the plateau guide")


def _add_below_image_blind(health, epochs, scores, bar: Optional[float], z: float) -> None:
    """The best epoch so far significantly below one fixed mask for every image: no signal, early.

    One-sided test of the per-image IoU against the bar. The bar is held fixed: it is a property of
    the validation masks, the same at every epoch, so only the model's per-image IoU is noise.
    """
    means = {h.epoch: float(scores[h.epoch][:, IOU].double().mean()) for h in epochs}
    finite = [h for h in epochs if math.isfinite(means[h.epoch])]
    if not usable(bar) or not finite:
        return
    best = max(finite, key=lambda h: means[h.epoch])
    ious = scores[best.epoch][:, IOU]
    change = paired_difference(ious, torch.full_like(ious, bar))
    _record(health, "below_image_blind", best, best, change, z)
    if change.z > -z:
        return
    health["fired"].append("no_signal")
    health["issues"].append(
        f"no signal from the images: the best val IoU so far (epoch {best.epoch}) is below what one fixed mask for "
        f"every image (the validation set's mean mask) scores, {bar:.4f}, by {change.describe()}, z = {change.z:.1f} "
        f"(beyond the noise: z <= -{z:.2f}): the model does worse than ignoring the images")
    health["suggestions"].append(_NO_SIGNAL_ADVICE)


def _add_no_signal(health: Dict[str, Any], history: Sequence[EpochStats]) -> None:
    """Val IoU no better than one fixed mask for every image, epochs in a row: nothing learnt from the images."""
    recent = history[-NO_SIGNAL_EPOCHS:]
    bar = history[-1].image_blind_iou
    if len(recent) < NO_SIGNAL_EPOCHS or not usable(bar, *(epoch.val_iou for epoch in recent)):
        return
    if max(epoch.val_iou for epoch in recent) >= bar + NO_SIGNAL_MARGIN:
        return
    ious = ", ".join(f"{epoch.val_iou:.4f}" for epoch in recent)
    health["fired"].append("no_signal")
    health["issues"].append(
        f"no signal from the images: val IoU stayed below {bar + NO_SIGNAL_MARGIN:.4f} for {len(recent)} epochs "
        f"({ious}), while one fixed mask for every image (the validation set's mean mask) scores {bar:.4f}: the "
        "model has learnt where objects usually are, not what they look like")
    health["suggestions"].append(_NO_SIGNAL_ADVICE)
