"""Albumentations pipelines for training and evaluation, seeded per sample for exact resume."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

# albumentations pings PyPI for a newer version on import; Kaggle and CI are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_train_transform(
    img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> A.Compose:
    """Training augmentation: random-resized crop, flip, small rotation, mild colour jitter.

    Args:
        img_size: output side in pixels.
        mean: per-channel mean in 0-1 units (as in timm's pretrained config).
        std: per-channel std in 0-1 units.

    Returns:
        Compose mapping ``image`` (H, W, 3) uint8 and ``mask`` (H, W) uint8 to an image tensor
        (3, img_size, img_size) float32 and a mask tensor (img_size, img_size) uint8.
    """
    return A.Compose(
        [
            A.RandomResizedCrop(size=(img_size, img_size), scale=(0.75, 1.0), ratio=(0.75, 4.0 / 3.0)),
            A.HorizontalFlip(p=0.5),
            # Rotate after the crop: cheaper at the training size; reflection avoids black corners.
            A.Rotate(limit=15, border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ],
        mask_interpolation=cv2.INTER_NEAREST,
    )


def build_val_transform(
    img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> A.Compose:
    """Evaluation pipeline: resize to a square and normalise (deterministic).

    Args:
        img_size: output side in pixels.
        mean: per-channel mean in 0-1 units.
        std: per-channel std in 0-1 units.

    Returns:
        Compose with the same input/output contract as :func:`build_train_transform`.
    """
    return A.Compose(
        [
            A.Resize(height=img_size, width=img_size, interpolation=cv2.INTER_LINEAR),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ],
        mask_interpolation=cv2.INTER_NEAREST,
    )


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that is a pure function of (seed, epoch, index); all three must be >= 0."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint32)[0])


def seed_transform(transform: A.BaseCompose, sample_seed: int) -> None:
    """Reset the pipeline's random state so its next call depends only on ``sample_seed``.

    ``Compose.set_random_seed`` would give every child transform an identical stream (so e.g.
    flip and rotation would always fire together); one shared generator pair keeps them independent.
    """
    transform.set_random_state(np.random.default_rng(sample_seed), random.Random(sample_seed))


def to_sample(
    transform: A.BaseCompose | None, image: np.ndarray, mask: np.ndarray, sample_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a seeded transform and return model-ready tensors.

    Args:
        transform: pipeline from this module, or None to only scale the image to [0, 1].
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8 in {0, 1}, same H and W as the image.
        sample_seed: seed for this sample's augmentation (see :func:`augmentation_seed`).

    Returns:
        image: (3, H', W') float32.
        mask: (1, H', W') float32 in {0, 1}.
    """
    if transform is None:
        image_tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
        mask_tensor = torch.from_numpy(np.ascontiguousarray(mask))
    else:
        seed_transform(transform, sample_seed)
        out = transform(image=image, mask=mask)
        image_tensor, mask_tensor = out["image"], out["mask"]
        if isinstance(image_tensor, np.ndarray):  # a pipeline without ToTensorV2
            image_tensor = torch.from_numpy(np.ascontiguousarray(image_tensor.transpose(2, 0, 1)))
        if isinstance(mask_tensor, np.ndarray):
            mask_tensor = torch.from_numpy(np.ascontiguousarray(mask_tensor))
    return image_tensor.float().contiguous(), (mask_tensor > 0).float().unsqueeze(0)
