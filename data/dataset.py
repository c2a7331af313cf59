"""Image/mask dataset whose augmentation is a pure function of (seed, epoch, index)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import torch
from torch.utils.data import Dataset

from data.image_io import read_image, read_mask, swapped_sides_problem
from data.layouts import DatasetError, SamplePair
from data.loaders import EpochIndex, split_epoch_index
from data.transforms import augmentation_seed, to_sample

logger = logging.getLogger(__name__)


class SegmentationDataset(Dataset):
    """Samples read from :class:`SamplePair` files and passed through a seeded transform.

    Determinism: item ``index`` in epoch ``e`` is augmented with a seed derived from
    ``(seed, e, index)``, so the same sample comes out bit-identical whichever worker loads it,
    in whatever order, and after a resume. The epoch comes with the index when it is an
    :class:`~data.loaders.EpochIndex` (persistent workers), else from :meth:`set_epoch`.
    """

    def __init__(self, pairs: Sequence[SamplePair], transform=None, seed: int = 0, skip_bad: bool = False) -> None:
        """Args:
        pairs: samples, e.g. from :func:`data.layouts.find_pairs`.
        transform: pipeline from :mod:`data.transforms`, or None for [0, 1] tensors at full size.
        seed: augmentation seed (>= 0).
        skip_bad: a sample that fails to load (``--skip-bad-samples``) is replaced by the next
            loadable one, with a warning, instead of raising: the header checks before training
            cannot see every broken file, and a worker must not end the run for one.
        """
        self.pairs = list(pairs)
        self.transform = transform
        self.seed = seed
        self.skip_bad = skip_bad
        self.epoch = 0
        # Masks whose size differed from their image and were resized (counted in this process
        # only: DataLoader workers keep their own counts).
        self.resized_masks = 0
        self._resized_names: set[str] = set()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws :meth:`__getitem__` reproduces."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_arrays(self, index: int):
        """Read one sample without augmentation.

        Returns:
            image: (H, W, 3) uint8 RGB.
            mask: (H, W) uint8 in {0, 1}, resized (nearest) to the image if its size differed.

        Raises:
            DatasetError: a file is unreadable, or the mask's width and height are swapped
                relative to its image (stretching it would train on a wrong mask).
        """
        pair = self.pairs[index]
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
        height, width = image.shape[:2]
        swapped = swapped_sides_problem(image.shape, mask.shape)
        if swapped:
            raise DatasetError(f"Bad sample {pair.mask}: {swapped}. Rotate or re-export the mask, "
                               "or pass --skip-bad-samples to skip such samples.")
        if mask.shape != (height, width):
            if pair.name not in self._resized_names:
                self._resized_names.add(pair.name)
                self.resized_masks += 1
                logger.warning(
                    "Mask %s is %dx%d but its image is %dx%d; resized the mask (nearest neighbour)",
                    pair.mask, mask.shape[1], mask.shape[0], width, height,
                )
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        return image, mask

    def _load_or_substitute(self, index: int):
        """``load_arrays(index)``; with ``skip_bad`` a failing sample gives the next one that loads
        (a pure function of the index, so determinism across workers and resumes holds)."""
        for offset in range(len(self.pairs) if self.skip_bad else 1):
            try:
                return self.load_arrays((index + offset) % len(self.pairs))
            except DatasetError as error:
                if not self.skip_bad:
                    if "--skip-bad-samples" in str(error):
                        raise
                    raise DatasetError(f"{error} Or pass --skip-bad-samples to skip such files.") from None
                logger.warning("Skipped a bad sample (--skip-bad-samples): %s", error)
        raise DatasetError(f"no sample of the {len(self.pairs)} could be read; check the dataset files")

    def __getitem__(self, item: int | EpochIndex) -> dict[str, torch.Tensor | str | int]:
        """Returns {"image": (3, H, W) float32, "mask": (1, H, W) float32 in {0, 1}, "name", "index"}."""
        epoch, index = split_epoch_index(item, self.epoch)
        image, mask = self._load_or_substitute(index)
        sample_seed = augmentation_seed(self.seed, epoch, index)
        image_tensor, mask_tensor = to_sample(self.transform, image, mask, sample_seed)
        return {"image": image_tensor, "mask": mask_tensor, "name": self.pairs[index].name, "index": index}
