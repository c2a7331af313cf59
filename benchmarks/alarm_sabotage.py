"""The broken runs of ``monitor_alarms.py``: each a change of settings plus, where no flag can break
the run that way, a change made in code to the built trainer."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch

from data.loaders import EpochIndex, split_epoch_index

OVERFIT_SCENES, OVERFIT_EPOCHS = 32, 40


class ShuffledMasks(torch.utils.data.Dataset):
    """Every training image with another image's mask (a fixed derangement): nothing to learn."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # pairs, transform, ...: the wrapped dataset's
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, item):
        sample = self.dataset[item]
        epoch, index = split_epoch_index(item, 0)
        partner = (index + len(self) // 2) % len(self)
        other = self.dataset[EpochIndex(epoch, partner) if isinstance(item, tuple) else partner]
        return dict(sample, mask=other["mask"])


def inject_nan(trainer, first_call: int, calls: int) -> None:
    """The loss is NaN for ``calls`` forward passes from the ``first_call``-th on (1-based; counted in
    micro-batches, since skipped updates do not advance the step counter)."""
    criterion = trainer.criterion
    forward = criterion.forward
    count = [0]

    def poisoned(*args, **kwargs):
        losses = forward(*args, **kwargs)
        count[0] += 1
        if first_call <= count[0] < first_call + calls:
            losses = {key: value * float("nan") for key, value in losses.items()}
        return losses

    criterion.forward = poisoned


def memorise_fixed_scenes(trainer) -> None:
    """The same few training scenes every epoch, without augmentation: a model that can memorise them."""
    train = trainer.data.train_dataset
    train.fresh_each_epoch = False
    train.transform = trainer.data.val_dataset.transform


def apply_sabotage(name: str, trainer) -> None:
    if name.startswith("masks_shuffled"):
        trainer.data.train_dataset = ShuffledMasks(trainer.data.train_dataset)
    elif name == "nan_loss":
        inject_nan(trainer, first_call=trainer.plan.steps_per_epoch(1) + 5, calls=3)  # 3 updates early in epoch 2
    elif name == "overfit":
        memorise_fixed_scenes(trainer)


Overrides = Callable[[Dict[str, Any]], Dict[str, Any]]
# name -> (settings changed from the base run's, trained on real photographs)
SABOTAGES: Dict[str, Tuple[Overrides, bool]] = {
    "lr_x30": (lambda base: dict(lr=30 * base["lr"], stage2_lr=30 * base["stage2_lr"]), False),
    "lr_x0.001": (lambda base: dict(lr=1e-3 * base["lr"], stage2_lr=1e-3 * base["stage2_lr"], min_lr=1e-7), False),
    "masks_shuffled": (lambda base: {}, False),
    "nan_loss": (lambda base: {}, False),
    "overfit": (lambda base: dict(synthetic_train_size=OVERFIT_SCENES, epochs=OVERFIT_EPOCHS), False),
    "masks_shuffled-real": (lambda base: {}, True),
}
