"""Test-set batches for ``eval``: DataLoader workers read, check and resize each image/mask pair
while the model runs, so decoding is no longer paid between forward passes.

A problem with a file (unreadable, mask with swapped sides) is returned as text rather than raised
in the worker: a DataLoader re-raises worker errors with the worker's traceback in the message,
and the user must see one line (``evaluate_dataset`` raises it as a ``DatasetError``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.image_io import read_image, read_mask, swapped_sides_problem
from data.layouts import DatasetError, SamplePair
from data.loaders import _worker_init


@dataclass
class TestSample:
    """One prepared pair.

    Attributes:
        name: the pair's file stem.
        image: normalised ``(3, S, S)`` float tensor (empty when ``problem`` is set).
        ground_truth: ``(H, W)`` uint8 mask, 0/255, at its original size.
        image_size: ``(height, width)`` of the image file.
        problem: one-line description of what is wrong with the pair, else None.
    """

    name: str
    image: torch.Tensor
    ground_truth: np.ndarray
    image_size: Tuple[int, int]
    problem: Optional[str] = None


class TestPairs(Dataset):
    """Image/mask pairs -> :class:`TestSample` through ``transform`` (the predictor's val transform:
    an albumentations pipeline returning ``{"image": (3, S, S) tensor}``)."""

    def __init__(self, pairs: Sequence[SamplePair], transform: Callable[..., dict], root: str):
        self.pairs, self.transform, self.root = list(pairs), transform, root

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> TestSample:
        pair = self.pairs[index]
        empty = np.zeros((0, 0), np.uint8)
        try:
            image = read_image(pair.image)
            ground_truth = read_mask(pair.mask) * np.uint8(255)
        except DatasetError as error:
            return TestSample(pair.name, torch.empty(0), empty, (0, 0), str(error))
        swapped = swapped_sides_problem(image.shape, ground_truth.shape)
        if swapped:
            problem = (f"Bad sample {pair.mask}: {swapped}. Rotate or re-export the mask, "
                       f"or remove the pair from {self.root}.")
            return TestSample(pair.name, torch.empty(0), empty, (0, 0), problem)
        return TestSample(pair.name, self.transform(image=image)["image"], ground_truth, image.shape[:2])


def keep_as_list(samples: List[TestSample]) -> List[TestSample]:
    """Collate function: samples stay a list (masks differ in size); images are stacked by the caller."""
    return samples


def build_test_loader(pairs: Sequence[SamplePair], transform: Callable[..., dict], root: str,
                      batch_size: int = 1, num_workers: int = 0) -> DataLoader:
    """Batches of :class:`TestSample` lists, in the pairs' order (sorted by name)."""
    return DataLoader(TestPairs(pairs, transform, root), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=keep_as_list,
                      worker_init_fn=_worker_init if num_workers > 0 else None)
