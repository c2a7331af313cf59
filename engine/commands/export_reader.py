"""Reading a safetensors export (``engine.commands.export`` writes it) for ``engine.api.load_model``:
the metadata checked, then the model rebuilt offline from it and the weights loaded.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, NamedTuple, Tuple

import torch
from torch import nn

from engine.checkpoint import CheckpointError
from engine.checkpoint.format import SIGNATURE_KEYS, signature_conflicts
from models import ModelConfig, build_model

WEIGHTS_FORMAT = "camo-moe-weights"  # the metadata "format" of our safetensors files
REQUIRED_METADATA = ("format", "model_config", "model_signature", "img_size", "normalization", "weights")


def read_metadata(path: Path) -> Dict[str, str]:
    """The metadata of one of our safetensors files, checked; one-line ``CheckpointError`` otherwise."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({first}); pass a file written by "
                              "train_ultimate.py export --format safetensors") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing or metadata.get("format") != WEIGHTS_FORMAT:
        what = f"lacks the metadata {', '.join(missing)}" if missing else f"has format {metadata.get('format')!r}"
        raise CheckpointError(f"{path} {what}, so the model cannot be rebuilt from it; export the checkpoint "
                              "with train_ultimate.py export --format safetensors")
    return metadata


def parse_metadata(metadata: Dict[str, str], path: Path) -> Tuple[ModelConfig, int, Tuple[Any, Any]]:
    """``(model config, inference side, normalisation)`` from checked metadata."""
    try:
        config = ModelConfig(**json.loads(metadata["model_config"]))
        signature = json.loads(metadata["model_signature"])
        img_size = int(metadata["img_size"])
        mean, std = json.loads(metadata["normalization"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} has damaged metadata ({str(error)[:100]}); export the checkpoint again") \
            from None
    conflicts = signature_conflicts(signature, dataclasses.asdict(config))
    if conflicts or set(signature) != set(SIGNATURE_KEYS):
        key = conflicts[0] if conflicts else "model_signature"
        raise CheckpointError(f"{path}: its model_config and model_signature disagree on {key}; the metadata was "
                              "edited: export the checkpoint again")
    return dataclasses.replace(config, pretrained=False, pretrained_path=None), img_size, (tuple(mean), tuple(std))


class ExportedModel(NamedTuple):
    """A model rebuilt from a safetensors export (``model`` in eval mode on the device)."""

    model: nn.Module
    config: ModelConfig
    img_size: int
    normalization: Tuple[Any, Any]
    metadata: Dict[str, str]


def load_safetensors_model(path: Path, device: torch.device) -> ExportedModel:
    """Rebuild the exported model offline, on ``device``.

    fp16 files are loaded into the float32 model (inference runs in float32).

    Raises:
        CheckpointError: not our safetensors file, missing or mismatched metadata, or weights that
            do not fit the model the metadata describes.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} not found; pass a .pth checkpoint or an exported .safetensors")
    metadata = read_metadata(path)
    config, img_size, normalization = parse_metadata(metadata, path)
    model = build_model(config)
    state = load_file(str(path))
    reference = model.state_dict()
    state = {name: tensor.to(reference[name].dtype) if name in reference else tensor for name, tensor in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:160]
        raise CheckpointError(f"the weights of {path} do not fit the model its metadata describes ({first}); "
                              "export the checkpoint again") from None
    return ExportedModel(model.to(device).eval(), config, img_size, normalization, metadata)
