"""One validation pass: per-image scores and the structure loss of a model on the validation set."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from engine.config import TrainConfig
from engine.evaluation.mask_prior import ImageBlindBaseline
from engine.evaluation.mask_scores import SCORE_NAMES, MetricAccumulator, per_image_scores
from engine.evaluation.validation_cod import COD_VALIDATION_METRICS, GroundTruthSizeScores
from engine.training.losses import structure_loss
from engine.training.precision import Precision


@torch.no_grad()
def validation_pass(module: nn.Module, data, config: TrainConfig, device: torch.device, precision: Precision,
                    memory_format: torch.memory_format, show_bars: bool,
                    measure_image_blind: bool) -> Tuple[Dict[str, float], Optional[float]]:
    """Score ``module`` (already in eval mode) on ``data.val_dataset``, averaged over all ranks.

    Args:
        data: the run's ``DataModule`` (batches, validation set, cross-rank ``all_reduce``).
        measure_image_blind: also measure the IoU of the best image-blind constant mask; the
            validation masks are the same every epoch, so the Trainer asks for it once.

    Returns:
        Mean per-image IoU / Dice / MAE, the structure loss (and the COD metrics that
        ``--best-metric`` needs), and the image-blind IoU (None unless measured).
    """
    cod_scores = GroundTruthSizeScores(data.val_dataset) if config.best_metric in COD_VALIDATION_METRICS else None
    # Every key up front: a DDP rank with no validation image (fewer images than ranks) joins the
    # same all-reduces, of the same size, as the others.
    accumulator = MetricAccumulator(device, ("loss", *SCORE_NAMES,
                                             *(COD_VALIDATION_METRICS if cod_scores is not None else ())))
    baseline = ImageBlindBaseline(device) if measure_image_blind else None
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
        accumulator.update(scores, structure_loss(logits, masks, reduction="none").sum())
    image_blind_iou = baseline.compute(data.all_reduce) if baseline is not None else None
    return accumulator.compute(data.all_reduce(accumulator.totals())), image_blind_iou
