"""The broken runs of ``monitor_alarms.py``: each a change of settings plus, where no flag can break
the run that way, a change made in code to the built trainer."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch

from data.loaders import EpochIndex, split_epoch_index

OVERFIT_SCENES, OVERFIT_EPOCHS = 32, 40
REAL_IMAGES = 480  # photographs of the healthy real runs: the recipe holds out 10 % (48) to validate
# The real overfitting run: 32 photographs to memorise, the other 128 of its 160 validate (80 % held out).
OVERFIT_REAL_IMAGES, OVERFIT_REAL_VAL_FRACTION, OVERFIT_REAL_EPOCHS = 160, 0.8, 80


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


def memorise_fixed_samples(trainer) -> None:
    """The same few training samples every epoch, without augmentation: a model that can memorise them."""
    train = trainer.data.train_dataset
    if hasattr(train, "fresh_each_epoch"):  # synthetic scenes: the same scenes every epoch
        train.fresh_each_epoch = False
    train.transform = trainer.data.val_dataset.transform


def apply_sabotage(name: str, trainer) -> None:
    if name.startswith("masks_shuffled"):
        trainer.data.train_dataset = ShuffledMasks(trainer.data.train_dataset)
    elif name == "nan_loss":
        inject_nan(trainer, first_call=trainer.plan.steps_per_epoch(1) + 5, calls=3)  # 3 updates early in epoch 2
    elif name.startswith("overfit"):
        memorise_fixed_samples(trainer)


Overrides = Callable[[Dict[str, Any]], Dict[str, Any]]
# name -> (settings changed from the base run's, real photographs it trains and validates on: 0 for the demo's scenes)
SABOTAGES: Dict[str, Tuple[Overrides, int]] = {
    "lr_x30": (lambda base: dict(lr=30 * base["lr"], stage2_lr=30 * base["stage2_lr"]), 0),
    "lr_x0.001": (lambda base: dict(lr=1e-3 * base["lr"], stage2_lr=1e-3 * base["stage2_lr"], min_lr=1e-7), 0),
    "masks_shuffled": (lambda base: {}, 0),
    "nan_loss": (lambda base: {}, 0),
    "overfit": (lambda base: dict(synthetic_train_size=OVERFIT_SCENES, epochs=OVERFIT_EPOCHS), 0),
    "masks_shuffled-real": (lambda base: {}, REAL_IMAGES),
    "overfit-real": (lambda base: dict(epochs=OVERFIT_REAL_EPOCHS, val_fraction=OVERFIT_REAL_VAL_FRACTION),
                     OVERFIT_REAL_IMAGES),
}
