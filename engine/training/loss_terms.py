"""The per-term losses a training step logs (TensorBoard ``loss/<name>``), kept on the device."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn


def loss_term_names(criterion: nn.Module, losses: Dict[str, torch.Tensor]) -> Tuple[str, ...]:
    """Log names of the criterion's terms in ``losses``: ``<term>_raw`` for each of its ``term_names``,
    and ``<term>_normalized`` where the criterion returned one (``ema`` mode; with ``none`` a
    "normalised" copy of the raw value would only mislead)."""
    names = tuple(getattr(criterion, "term_names", ()))
    raw = tuple(f"{name}_raw" for name in names if name in losses)
    normalized = tuple(f"{name}_normalized" for name in names if f"{name}_normalized" in losses)
    return raw + normalized


def stacked_terms(losses: Dict[str, torch.Tensor], names: Tuple[str, ...]) -> torch.Tensor:
    """``(K,)`` float32 values of the terms ``names`` (from :func:`loss_term_names`), detached; no host sync."""
    return torch.stack([losses[_term_key(name)].detach().float().reshape(()) for name in names])


def _term_key(log_name: str) -> str:
    """``structure_raw`` -> the criterion's ``structure``; ``structure_normalized`` stays as it is."""
    return log_name[:-len("_raw")] if log_name.endswith("_raw") else log_name
