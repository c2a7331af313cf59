"""The Python API: load a trained model from a ``.pth`` checkpoint or an exported ``.safetensors``
file, then segment images.

    model = load_model("best_model.pth", weights="ema")     # device="auto": a GPU when visible
    prob = model.predict(image_rgb)                           # (H, W, 3) uint8 -> (H, W) float in [0, 1]
    probs = model.predict_batch([image_a, image_b])           # any sizes, one map per image

Predictions go through the same pipeline as ``eval`` and ``predict`` (``engine.commands.predictor``):
resize to the training side, backbone normalisation, optional TTA, bilinear resize back.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from engine.checkpoint import CheckpointError, load_checkpoint
from engine.commands.export import LogitsOnly
from engine.commands.export_reader import load_safetensors_model
from engine.commands.predictor import Predictor, build_checkpoint_model, checkpoint_config, select_weights
from engine.runtime.cuda_device import select_device
from models import ModelConfig

logger = logging.getLogger(__name__)

API_WEIGHTS = ("best", "base", "ema")
DeviceLike = Union[str, torch.device]


class CamoModel:
    """A trained segmenter ready for images.

    Attributes:
        predictor: the shared inference pipeline (``engine.commands.predictor.Predictor``).
        weights: which weights were loaded (``base`` or ``ema``).
        model_config: the architecture, as ``build_model`` takes it (pretrained loading off).
        source: the file the model was read from.
    """

    def __init__(self, predictor: Predictor, weights: str, model_config: ModelConfig, source: Path):
        self.predictor, self.weights, self.model_config, self.source = predictor, weights, model_config, Path(source)

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def module(self) -> torch.nn.Module:
        """The underlying ``CamoSegmenter`` (eval mode); its forward returns ``SegmentationOutput``."""
        return self.predictor.model

    @property
    def img_size(self) -> int:
        return self.predictor.img_size

    @property
    def normalization(self):
        return self.predictor.normalization

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Foreground probability of one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (``data.image_io.read_image`` reads any file as that).

        Returns:
            ``(H, W)`` float32 in [0, 1], at the input's size.
        """
        return self.predictor.predict(check_image(image))

    def predict_batch(self, images: Sequence[np.ndarray], batch_size: int = 8) -> List[np.ndarray]:
        """Probabilities of several images (any sizes), ``batch_size`` per forward pass.

        Returns:
            One ``(H_i, W_i)`` float32 map in [0, 1] per image, in order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = [check_image(image) for image in images]
        maps: List[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            maps.extend(self.predictor.predict_batch(images[start:start + batch_size]))
        return maps

    def logits_module(self) -> LogitsOnly:
        """The model as a plain tensor function for tracing and export: ``(B, 3, H, W)`` RGB in [0, 1]
        -> ``(B, 1, H, W)`` logits (``torch.jit.trace``, ``torch.export``, ONNX accept it)."""
        return LogitsOnly(self.module, self.img_size, self.normalization).to(self.device).eval()

    def __repr__(self) -> str:
        return (f"CamoModel({self.source.name}, {self.model_config.backbone}, {self.weights} weights, "
                f"{self.img_size}px, device={self.device})")


def check_image(image: np.ndarray) -> np.ndarray:
    """Refuse what is not an ``(H, W, 3)`` uint8 array, saying how to get one."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got shape {shape} dtype {dtype}; "
                         "data.image_io.read_image(path) reads any image file as one")
    return np.ascontiguousarray(image)


def resolve_device(device: DeviceLike) -> torch.device:
    """``"auto"`` (a GPU when visible), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    return select_device(device) if device in ("auto", "cpu", "cuda") else torch.device(device)


def load_model(path: Union[str, Path], weights: str = "best", device: DeviceLike = "auto", tta: str = "none",
               img_size: Optional[int] = None) -> CamoModel:
    """Load a trained model for inference; works offline (nothing pretrained is downloaded).

    Args:
        path: a ``.pth`` checkpoint written by ``train`` or a ``.safetensors`` file written by ``export``.
        weights: ``best`` (the weights that scored best in training; a safetensors file's own),
            ``base`` or ``ema``.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | a ``torch.device``.
        tta: ``none`` | ``flip`` | ``flip-scale`` (see ``Predictor``).
        img_size: inference side; default the training ``--img-size``.

    Raises:
        CheckpointError: unreadable file, EMA weights asked of a checkpoint without them, or an
            exported file whose metadata is missing or does not match its weights.
    """
    if weights not in API_WEIGHTS:
        raise ValueError(f"weights must be one of {API_WEIGHTS}, got {weights!r}")
    path, device = Path(path), resolve_device(device)
    if path.suffix == ".safetensors":
        exported = load_safetensors_model(path, device)
        stored = exported.metadata["weights"]
        if weights not in ("best", stored):
            raise CheckpointError(f"{path} holds the {stored} weights only; pass weights='best' or {stored!r}, "
                                  f"or export the {weights} weights")
        predictor = Predictor(exported.model, img_size or exported.img_size, exported.normalization, device, tta)
        return CamoModel(predictor, stored, exported.config, path)
    payload = load_checkpoint(path)
    (chosen,) = select_weights(payload, weights)
    module = build_checkpoint_model(payload, path, chosen, device)
    config = checkpoint_config(payload, path)
    predictor = Predictor(module, img_size or config.img_size, module.encoder.normalization, device, tta)
    logger.info("Loaded %s (%s, %s weights, %dpx, TTA %s)", path, config.backbone, chosen, predictor.img_size, tta)
    return CamoModel(predictor, chosen, config.model_config(synthetic=True, weights_from_checkpoint=True), path)
