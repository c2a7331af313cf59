"""Multi-scale training: each training batch resized to a side drawn from a few multiples of the image size.

The samples come out of the augmentation pipeline at ``--img-size``; a whole batch is then resized
(bilinear, images and masks alike) to one side drawn per batch, as F3Net-style COD/SOD training
does in its collate step. Done on the batch, after it reaches the device, so the workers' pipeline
and cache do not change and the resize costs the GPU microseconds. The draw is a pure function of
``(seed, epoch, batch index)``: a resumed run and every DDP rank draw the same sides.
"""
from __future__ import annotations

import random
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


class BatchScale:
    """Resize each training batch to a side drawn from ``sides``.

    Args:
        img_size: the side the samples arrive at (``--img-size``).
        sides: the batch sides to draw from (``TrainConfig.train_sides``); ``(img_size,)`` changes nothing.
        seed: the run's ``--seed``.
    """

    def __init__(self, img_size: int, sides: Sequence[int], seed: int) -> None:
        self.img_size, self.seed = img_size, seed
        self.sides = tuple(sorted(set(sides)))

    @property
    def enabled(self) -> bool:
        return self.sides != (self.img_size,)

    @property
    def largest_side(self) -> int:
        """What memory must allow for (the dry run's estimate uses it)."""
        return max(self.sides[-1], self.img_size)

    def side_at(self, epoch: int, batch_index: int) -> int:
        """The side of batch ``batch_index`` (0-based, within the epoch) of epoch ``epoch`` (0-based)."""
        if len(self.sides) == 1:
            return self.sides[0]
        # a string seed is hashed with SHA-512 by random.Random: the same in every process and rank
        return random.Random(f"batch-scale:{self.seed}:{epoch}:{batch_index}").choice(self.sides)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, epoch: int,
                 batch_index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Resize ``(B, 3, H, W)`` images and ``(B, 1, H, W)`` masks by ``side_at / img_size``.

        Returns:
            The images (their memory format kept) and masks, each ``(B, C, H', W')``; the inputs
            themselves when the side is ``img_size``. Masks stay soft in [0, 1] at the edges,
            which the structure loss takes as they are.
        """
        side = self.side_at(epoch, batch_index)
        if side == self.img_size:
            return images, masks
        height, width = (int(round(extent * side / self.img_size)) for extent in images.shape[-2:])
        channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        resized = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
        if channels_last:
            resized = resized.contiguous(memory_format=torch.channels_last)
        return resized, F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
