"""``predict``: one mask PNG per input image at the image's own resolution, and optional overlays.

Probabilities are quantised to 8 bits as ``eval`` quantises them (``engine.evaluation.cod_metrics.to_uint8_map``),
so pysodmetrics run on the PNGs written here equals the scores ``eval`` reports (``engine.commands.evaluate``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from data.image_io import read_image
from data.layouts import DatasetError
from engine.commands.predictor import Predictor, list_images, overlay, write_png
from engine.config import ConfigError
from engine.evaluation.cod_metrics import to_uint8_map

logger = logging.getLogger(__name__)


def output_names(images: Sequence[Path]) -> List[str]:
    """PNG names for the inputs: ``<stem>.png``, or ``<name with dots as _>.png`` when stems collide."""
    stems = [path.stem for path in images]
    return [f"{path.stem}.png" if stems.count(path.stem) == 1 else f"{path.name.replace('.', '_')}.png"
            for path in images]


def predict_images(predictor: Predictor, source: Path, output: Path, binary: bool = False,
                   with_overlay: bool = False) -> int:
    """Write one mask PNG per input image at its original size; returns how many were written.

    Masks hold the probability as 0-255, or 0/255 with ``binary`` (foreground where the 8-bit
    probability is > 127, i.e. the threshold ``eval`` uses for IoU). Overlays go to
    ``output/overlay/<name>.jpg``. In a folder, unreadable images are skipped with a warning.
    """
    source, output = Path(source), Path(output)
    images = list_images(source)
    if not images:
        raise DatasetError(f"no images at {source}; pass an image file or a folder of "
                           ".jpg/.png/.bmp/.webp/.tif files to --input")
    try:
        output.mkdir(parents=True, exist_ok=True)
        if with_overlay:
            (output / "overlay").mkdir(exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create --output {output} ({error.strerror}); pass a writable folder") from None
    written = 0
    for path, name in tqdm(list(zip(images, output_names(images))), desc="predict", leave=False, dynamic_ncols=True,
                           disable=not logger.isEnabledFor(logging.INFO)):
        try:
            image = read_image(path)
        except DatasetError as error:
            if source.is_file():
                raise
            logger.warning("Skipped: %s", error)
            continue
        probabilities = predictor.predict(image)
        mask = to_uint8_map(probabilities)
        if binary:
            mask = np.where(mask > 127, 255, 0).astype(np.uint8)
        write_png(output / name, mask)
        if with_overlay:
            ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(overlay(image, probabilities), cv2.COLOR_RGB2BGR))
            if ok:
                encoded.tofile(str(output / "overlay" / (Path(name).stem + ".jpg")))
        written += 1
    if not written:
        raise DatasetError(f"none of the {len(images)} image(s) in {source} could be read (see the warnings "
                           "above); no mask was written")
    logger.info("Wrote %d mask(s) to %s%s", written, output, f" ({len(images) - written} skipped)"
                if written < len(images) else "")
    return written
