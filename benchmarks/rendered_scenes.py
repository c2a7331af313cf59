"""A dataset's samples rendered once and served from memory, so the timings of ``gpu_check.py`` and
``step_overhead.py`` measure training, not the scene generator or the augmentation."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from data.loaders import split_epoch_index


class RenderedScenes(Dataset):
    """``source``'s samples of epoch 0, rendered by ``workers`` DataLoader processes (0: this one)."""

    def __init__(self, source: Dataset, workers: int = 0):
        loader = DataLoader(source, batch_size=None, num_workers=workers)
        # clone: a tensor from a worker holds a shared-memory file descriptor; hundreds would hit the limit
        self.samples = [{key: value.clone() if torch.is_tensor(value) else value for key, value in sample.items()}
                        for sample in loader]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        return self.samples[split_epoch_index(item, 0)[1]]  # the Trainer's loaders tag indices with the epoch

    def set_epoch(self, epoch: int) -> None:
        pass
