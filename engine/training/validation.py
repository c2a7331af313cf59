"""One validation pass: per-image scores and the structure loss of a model on the validation set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from engine.config import TrainConfig
from engine.evaluation.mask_prior import ImageBlindBaseline
from engine.evaluation.mask_scores import SCORE_NAMES, MetricAccumulator, per_image_scores
from engine.evaluation.validation_cod import COD_VALIDATION_METRICS, GroundTruthSizeScores
from engine.training.losses import structure_loss
from engine.training.precision import Precision


PER_IMAGE_SCORES = ("iou", "loss")  # the columns of ValidationResult.per_image


@dataclass
class ValidationResult:
    """What one validation pass measured.

    Attributes:
        metrics: mean per-image IoU / Dice / MAE, the structure loss ``loss`` (and the COD metrics
            that ``--best-metric`` needs).
        per_image: ``(N, 2)`` float32 on the CPU: each validation image's IoU and structure loss
            (columns ``PER_IMAGE_SCORES``), row ``i`` = dataset index ``i`` on every rank, so two
            epochs' rows are paired by image (the health report's noise, engine/monitors/health_rules.py).
        image_blind_iou: the IoU of the best image-blind constant mask, None unless measured.
    """

    metrics: Dict[str, float]
    per_image: torch.Tensor
    image_blind_iou: Optional[float] = None


@torch.no_grad()
def validation_pass(module: nn.Module, data, config: TrainConfig, device: torch.device, precision: Precision,
                    memory_format: torch.memory_format, show_bars: bool,
                    measure_image_blind: bool) -> ValidationResult:
    """Score ``module`` (already in eval mode) on ``data.val_dataset``, averaged over all ranks.

    Args:
        data: the run's ``DataModule`` (batches, validation set, cross-rank ``all_reduce``).
        measure_image_blind: also measure the IoU of the best image-blind constant mask; the
            validation masks are the same every epoch, so the Trainer asks for it once.
    """
    cod_scores = GroundTruthSizeScores(data.val_dataset) if config.best_metric in COD_VALIDATION_METRICS else None
    # Every key up front: a DDP rank with no validation image (fewer images than ranks) joins the
    # same all-reduces, of the same size, as the others.
    accumulator = MetricAccumulator(device, ("loss", *SCORE_NAMES,
                                             *(COD_VALIDATION_METRICS if cod_scores is not None else ())))
    baseline = ImageBlindBaseline(device) if measure_image_blind else None
    # Each rank fills the rows of its own images and leaves the others 0: one all-reduce (a sum)
    # then holds every image's scores once, in dataset order, whatever the rank split.
    table = torch.zeros(len(data.val_dataset), len(PER_IMAGE_SCORES), dtype=torch.float32, device=device)
    position = 0
    batches = data.batches(data.val_dataset, config.batch_size, 0, shuffle=False, start_sample=0)
    for batch in tqdm(batches, desc="validate", leave=False, disable=not show_bars):
        images = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
        masks = batch["mask"].to(device, non_blocking=True)
        if baseline is not None:
            baseline.update(masks)
        with precision.autocast():
            logits = module(images).logits.float()
        probabilities = torch.sigmoid(logits)
        scores = per_image_scores(probabilities, masks)
        if cod_scores is not None:
            scores.update(cod_scores(probabilities, batch))
        losses = structure_loss(logits, masks, reduction="none")
        accumulator.update(scores, losses.sum())
        # A dataset without "index": the unshuffled, unpadded sampler gives rank r the images r, r + W, ...
        rows = batch["index"] if "index" in batch else \
            torch.arange(position, position + len(masks)) * data.world_size + data.rank
        table[rows.to(device)] = torch.stack([scores["iou"].float(), losses.float()], dim=1)
        position += len(masks)
    image_blind_iou = baseline.compute(data.all_reduce) if baseline is not None else None
    return ValidationResult(accumulator.compute(data.all_reduce(accumulator.totals())),
                            data.all_reduce(table).cpu(), image_blind_iou)
