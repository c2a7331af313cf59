"""TensorBoard preview: each epoch, a grid of a few fixed validation samples, one row per sample:
image | ground truth | base prediction | one column per ``trainer.averaged_models`` entry (EMA).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid

from engine.training.callback import Callback, Order, is_main_process
from engine.training.modes import evaluating

logger = logging.getLogger(__name__)

PREVIEW_TAG = "val/preview"


def unnormalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(B, 3, H, W)`` normalised images back to [0, 1] RGB."""
    mean_tensor = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_tensor + mean_tensor).clamp(0, 1)


def preview_grid(columns: List[torch.Tensor], tile_size: int) -> torch.Tensor:
    """Lay ``(B, C, H, W)`` columns (C = 1 or 3, values in [0, 1]) out as B rows.

    Returns:
        ``(3, rows * tile, columns * tile)`` float image (plus 2-pixel gaps), for ``add_image``.
    """
    tiles = [F.interpolate(column.float(), size=(tile_size, tile_size), mode="bilinear", align_corners=False)
             .expand(-1, 3, -1, -1) for column in columns]
    interleaved = torch.stack(tiles, dim=1).flatten(0, 1)  # row-major: sample 0's columns, sample 1's...
    return make_grid(interleaved.clamp(0, 1).cpu(), nrow=len(columns), padding=2, pad_value=1.0)


class PreviewCallback(Callback):
    """Writes ``val/preview`` to TensorBoard at the end of every epoch (rank 0 only).

    Args:
        num_samples: validation samples shown (spread evenly over the validation set, fixed).
        tile_size: side of each tile in pixels (keeps the event file small at 384-px training).
    """

    name = "preview"
    order = Order.LOGGING - 1  # before the run log, whose epoch-end flush then writes the image

    def __init__(self, num_samples: int = 4, tile_size: int = 128):
        self.num_samples, self.tile_size = num_samples, tile_size
        self.images: Optional[torch.Tensor] = None
        self.masks: Optional[torch.Tensor] = None

    def on_train_start(self, trainer) -> None:
        dataset = trainer.data.val_dataset
        if not is_main_process(trainer) or len(dataset) == 0:
            return
        count = min(self.num_samples, len(dataset))
        indices = sorted(set(np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()))
        samples = [dataset[index] for index in indices]
        self.images = torch.stack([sample["image"] for sample in samples])
        self.masks = torch.stack([sample["mask"] for sample in samples])

    @torch.no_grad()
    def _predict(self, trainer, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with evaluating(module), trainer.precision.autocast():
            return torch.sigmoid(module(images).logits.float())

    def render(self, trainer) -> torch.Tensor:
        """The grid for the current weights: image | GT | base | averaged weights (EMA)."""
        model = trainer.unwrapped_model
        images = self.images.to(trainer.device)
        columns = [unnormalise(images, *model.encoder.normalization), self.masks.to(trainer.device),
                   self._predict(trainer, model, images)]
        columns += [self._predict(trainer, averaged, images) for averaged in trainer.averaged_models.values()]
        return preview_grid(columns, min(self.tile_size, images.shape[-1]))

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        if self.images is None or not trainer.is_logging or not is_main_process(trainer):
            return
        trainer.log_image(PREVIEW_TAG, self.render(trainer), record["global_step"])
