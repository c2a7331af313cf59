"""Inference: a checkpoint's base or EMA weights -> full-resolution probability maps, with TTA.

Images go through the validation pipeline (resize to the training side, backbone normalisation),
the probabilities are averaged over the test-time views and resized back to the size asked for
(the image's own size for ``predict``, the ground truth's for ``eval``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from data.layouts import IMAGE_EXTENSIONS
from data.transforms import build_val_transform
from engine.checkpoint import CheckpointError, check_model_format, load_checkpoint
from engine.checkpoint.format import has_ema, saved_weights, stored_config
from engine.config import FIELD_NAMES, TrainConfig
from models import build_model

logger = logging.getLogger(__name__)

WEIGHT_CHOICES = ("base", "ema")
TTA_MODES = ("none", "flip", "flip-scale")
TTA_SCALES = (1.0, 0.75, 1.25)


def checkpoint_config(payload: Dict, path: Path) -> TrainConfig:
    """The run's ``TrainConfig`` stored in a checkpoint (keys of other versions are ignored)."""
    if not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} holds no run config; use a .pth written by train_ultimate.py train")
    return TrainConfig(**{key: value for key, value in stored_config(payload).items() if key in FIELD_NAMES})


def build_checkpoint_model(payload: Dict, path: Path, weights: str, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model with its base or EMA weights, in eval mode on ``device``.

    The architecture comes from the stored config; pretrained weights are never downloaded
    (everything comes from the checkpoint), so this works offline.
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    if weights == "ema" and not has_ema(payload):
        raise CheckpointError(f"checkpoint {path} has no EMA weights (trained without --use-ema); "
                              "use --weights base")
    check_model_format(payload, path)
    model_config = checkpoint_config(payload, path).model_config(synthetic=True, weights_from_checkpoint=True)
    model = build_model(model_config)
    try:
        model.load_state_dict(saved_weights(payload, weights))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:160]
        raise CheckpointError(f"the {weights} weights of {path} do not fit the model of its own config ({first}); "
                              "the file is damaged or was edited") from None
    return model.to(device).eval()


class Predictor:
    """Probability maps of one model at any output size, averaged over test-time views.

    Args:
        model: segmenter returning ``.logits`` ``(B, 1, H, W)``; used in eval mode.
        img_size: side the images are resized to before the forward pass.
        normalization: ``(mean, std)`` of the backbone, in 0-1 units.
        device: where the forward pass runs.
        tta: ``none`` | ``flip`` (+ horizontal flip) | ``flip-scale`` (+ 0.75x and 1.25x sides).
    """

    def __init__(self, model: torch.nn.Module, img_size: int, normalization: Tuple[Sequence[float], Sequence[float]],
                 device: torch.device, tta: str = "none"):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        self.model, self.img_size, self.device, self.tta = model.eval(), img_size, device, tta
        mean, std = normalization
        self.normalization = (tuple(mean), tuple(std))
        self.transform = build_val_transform(img_size, mean, std)

    def views(self) -> List[Tuple[float, bool]]:
        """``(scale, flipped)`` pairs averaged by the current TTA mode."""
        scales = TTA_SCALES if self.tta == "flip-scale" else (1.0,)
        flips = (False,) if self.tta == "none" else (False, True)
        return [(scale, flipped) for scale in scales for flipped in flips]

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Mean foreground probability over the TTA views.

        Args:
            images: normalised ``(B, 3, S, S)`` batch on ``self.device``.

        Returns:
            ``(B, 1, S, S)`` float32 probabilities.
        """
        size = images.shape[-2:]
        views = self.views()
        total = torch.zeros((images.shape[0], 1, *size), device=images.device)
        for scale, flipped in views:
            batch = images
            if scale != 1.0:
                scaled = [max(16, int(round(side * scale))) for side in size]
                batch = F.interpolate(images, size=scaled, mode="bilinear", align_corners=False)
            if flipped:
                batch = batch.flip(-1)
            probabilities = torch.sigmoid(self.model(batch).logits.float())
            if flipped:
                probabilities = probabilities.flip(-1)
            if scale != 1.0:
                probabilities = F.interpolate(probabilities, size=size, mode="bilinear", align_corners=False)
            total += probabilities
        return total / len(views)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 RGB -> normalised ``(3, S, S)`` on the CPU (the val pipeline)."""
        return self.transform(image=image)["image"]

    def predict(self, image: np.ndarray, output_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """Probability map of one image, resized (bilinear) to ``output_size``.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (``data.image_io.read_image`` handles gray, RGBA, 16-bit).
            output_size: ``(height, width)`` of the result; default the image's own size.

        Returns:
            ``(height, width)`` float32 probabilities in [0, 1].
        """
        return self.predict_batch([image], None if output_size is None else [output_size])[0]

    def predict_batch(self, images: Sequence[np.ndarray],
                      output_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[np.ndarray]:
        """Probability maps of several images of any sizes, in one forward pass per TTA view.

        Args:
            images: ``(H_i, W_i, 3)`` uint8 RGB arrays; sizes may differ (each is resized to the
                inference side first).
            output_sizes: ``(height, width)`` of each result; default each image's own size.

        Returns:
            One ``(height_i, width_i)`` float32 map in [0, 1] per image.
        """
        sizes = list(output_sizes) if output_sizes is not None else [image.shape[:2] for image in images]
        if len(sizes) != len(images):
            raise ValueError(f"{len(images)} images but {len(sizes)} output sizes")
        batch = torch.stack([self.prepare(image) for image in images]).to(self.device)
        return resize_maps(self.probabilities(batch), sizes)


def resize_maps(probabilities: torch.Tensor, sizes: Sequence[Tuple[int, int]]) -> List[np.ndarray]:
    """Each ``(1, S, S)`` map of a ``(B, 1, S, S)`` batch resized (bilinear) to its own size.

    Images are resized one at a time, so a map does not depend on the others in its batch.

    Returns:
        ``B`` float32 arrays ``(height_i, width_i)``, clamped to [0, 1].
    """
    maps = []
    for probability, (height, width) in zip(probabilities, sizes):
        resized = F.interpolate(probability[None], size=(int(height), int(width)), mode="bilinear",
                                align_corners=False)
        maps.append(resized[0, 0].clamp_(0, 1).cpu().numpy())
    return maps


def select_weights(payload: Dict, choice: str) -> List[str]:
    """Weights named by a ``--weights`` choice.

    ``base`` / ``ema``: that one; ``both``: base and EMA; ``auto``: both when the checkpoint holds
    EMA weights, else base; ``best``: the weights that scored best in training (``best_weights``).
    """
    if choice == "auto":
        return ["base", "ema"] if has_ema(payload) else ["base"]
    if choice == "best":
        return [str(payload.get("best_weights", "base")) if has_ema(payload) else "base"]
    if choice == "both":
        return ["base", "ema"]
    return [choice]


def load_predictors(path: Path, weights: str, device: torch.device, tta: str = "none",
                    img_size: Optional[int] = None) -> Dict[str, Predictor]:
    """One ``Predictor`` per selected weights of one checkpoint (read once).

    Args:
        path: checkpoint file.
        weights: ``base`` | ``ema`` | ``both`` | ``auto`` | ``best`` (see ``select_weights``).
        device: inference device.
        tta: test-time augmentation mode (see ``Predictor``).
        img_size: inference side; default the run's training ``--img-size``.

    Raises:
        CheckpointError: unreadable checkpoint, or EMA weights asked of a checkpoint without them.
    """
    path = Path(path)
    payload = load_checkpoint(path)
    config = checkpoint_config(payload, path)
    side = img_size or config.img_size
    predictors = {}
    for name in select_weights(payload, weights):
        model = build_checkpoint_model(payload, path, name, device)
        predictors[name] = Predictor(model, side, model.encoder.normalization, device, tta)
    logger.info("Loaded %s (%s, %d experts; %s weights; %dpx, TTA %s)", path, config.backbone, config.num_experts,
                " + ".join(predictors), side, tta)
    return predictors


def list_images(source: Path) -> List[Path]:
    """One image file, or the visible image files of a folder sorted by name."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        return []
    return sorted(path for path in source.iterdir()
                  if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS)


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 gray or RGB array as PNG (``imencode`` + ``tofile``: non-ASCII paths work)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    encoded.tofile(str(path))


def overlay(image: np.ndarray, probabilities: np.ndarray, color: Tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """The image with the prediction tinted in ``color`` (soft) and its 0.5 contour drawn.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        probabilities: ``(H, W)`` in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    alpha = 0.5 * probabilities[..., None].astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + np.asarray(color, np.float32) * alpha
    blended = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours((probabilities > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    return cv2.drawContours(blended, contours, -1, color, thickness)
