"""Per-image validation score histories for the health rules' tests, drawn like real ones.

Each image has a fixed difficulty (the same images every epoch, so epochs are paired); each epoch
moves every image's score by the run's mean change plus that image's own training noise. The
tests judge arrays like these, never hand-picked epoch means.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from engine.monitors.health_rules import EpochStats


def draw_history(iou_means: Sequence[float], loss_means: Sequence[float], images: int = 100, seed: int = 0,
                 image_noise: float = 0.05, train_losses: Optional[Sequence[float]] = None,
                 image_blind_iou: Optional[float] = None) -> Tuple[List[EpochStats], dict]:
    """Epoch stats and ``{epoch: (N, 2)}`` scores whose per-image means follow ``iou_means`` / ``loss_means``.

    Per image: IoU = clamp(epoch mean + difficulty + noise), loss = epoch mean x (1 + difficulty
    term + noise); the difficulty spread (0.15 IoU) dwarfs the epoch-to-epoch noise, as measured on
    the demo's 100 validation scenes.
    """
    generator = torch.Generator().manual_seed(seed)
    difficulty = torch.randn(images, generator=generator, dtype=torch.float64)
    history, scores = [], {}
    for index, (iou_mean, loss_mean) in enumerate(zip(iou_means, loss_means)):
        epoch = index + 1
        iou = (iou_mean + 0.15 * difficulty + image_noise * torch.randn(images, generator=generator,
                                                                         dtype=torch.float64)).clamp(0, 1)
        loss = loss_mean * (1 + 0.3 * difficulty.abs() - 0.3 * 0.798
                            + 2 * image_noise * torch.randn(images, generator=generator, dtype=torch.float64))
        loss = loss.clamp_min(1e-3)
        scores[epoch] = torch.stack([iou, loss], dim=1).float()
        train = train_losses[index] if train_losses is not None else loss_mean
        history.append(EpochStats(epoch, float(loss.mean()), train, float(iou.mean()), image_blind_iou))
    return history, scores
