"""``eval`` and ``predict``: score checkpoints on test sets at the ground truth's resolution, and
write prediction PNGs at the input's resolution.

Both quantise probabilities to 8 bits the same way (``engine.evaluation.cod_metrics.to_uint8_map``), so the
scores ``eval`` reports equal pysodmetrics run on the PNGs ``predict`` writes.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from data.image_io import read_image, read_mask, swapped_sides_problem
from data.layouts import DatasetError, find_pairs
from engine.evaluation.cod_metrics import METRIC_NAMES, CODMetrics, to_uint8_map
from engine.config import ConfigError
from engine.evaluation.predictor import Predictor, list_images, overlay, write_png

logger = logging.getLogger(__name__)

Results = Dict[str, Dict[str, Dict[str, float]]]  # dataset -> weights -> metric -> value


def dataset_names(roots: Sequence[Path]) -> List[str]:
    """Table names of the dataset folders (their folder names, made unique with ``-2``, ``-3``...)."""
    names: List[str] = []
    for root in roots:
        base = Path(root).resolve().name or str(root)
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def evaluate_dataset(predictors: Mapping[str, Predictor], root: Path, include_noncam: bool = False,
                     skip_unpaired: bool = False) -> Dict[str, Dict]:
    """Scores of every predictor on one test set (COD10K-v3 root: its ``Test/`` split).

    Each prediction is resized to its ground truth's original size and quantised to 8 bits
    before scoring. ``skip_unpaired`` scores the complete pairs of a pack with lonely files.
    Returns ``{weights: {metric: value}}``.

    Raises:
        DatasetError: unpaired files (without ``skip_unpaired``), an unreadable file, or a mask
            whose width and height are swapped relative to its image.
    """
    pairs = find_pairs(root, "test", include_noncam, skip_unpaired)
    metrics = {name: CODMetrics() for name in predictors}
    mismatched = with_object = 0
    for pair in tqdm(pairs, desc=f"eval {Path(root).name}", leave=False, dynamic_ncols=True):
        image = read_image(pair.image)
        ground_truth = read_mask(pair.mask) * np.uint8(255)
        swapped = swapped_sides_problem(image.shape, ground_truth.shape)
        if swapped:
            raise DatasetError(f"Bad sample {pair.mask}: {swapped}. Rotate or re-export the mask, "
                               f"or remove the pair from {root}.")
        mismatched += ground_truth.shape != image.shape[:2]
        with_object += bool(ground_truth.any())
        for name, predictor in predictors.items():
            probabilities = predictor.predict(image, output_size=ground_truth.shape)
            metrics[name].step(to_uint8_map(probabilities), ground_truth)
    if mismatched:
        logger.info("%s: %d image(s) differ in size from their mask; scored at the mask's size", root, mismatched)
    if not with_object:
        logger.warning("All %d masks in %s are empty (no pixel > 127); check the mask format (gray 0/255, colour "
                       "and palette PNGs are read) or --dataset-path", len(pairs), root)
    return {name: metric.results() for name, metric in metrics.items()}


def evaluate(predictors: Mapping[str, Predictor], roots: Sequence[Path], include_noncam: bool = False,
             skip_unpaired: bool = False) -> Results:
    """``{dataset name: {weights: {metric: value}}}`` over several test sets."""
    results: Results = {}
    for name, root in zip(dataset_names(roots), roots):
        results[name] = evaluate_dataset(predictors, Path(root), include_noncam, skip_unpaired)
    return results


def format_table(results: Results) -> str:
    """Datasets x metrics, the weights (base, EMA) side by side under each metric."""
    weights = list(next(iter(results.values())))
    width = max(len("dataset"), *(len(name) for name in results))
    group = max(8 * len(weights), max(len(metric) for metric in METRIC_NAMES) + 1)
    cell = group // len(weights) - 1
    lines = [f"{'':<{width}} " + "".join(f"{metric:<{group}}" for metric in METRIC_NAMES),
             f"{'dataset':<{width}} " + "".join(f"{name:<{cell}} " for name in weights) * len(METRIC_NAMES)]
    for dataset, by_weights in results.items():
        cells = "".join(f"{by_weights[name][metric]:<{cell}.4f} " for metric in METRIC_NAMES for name in weights)
        lines.append(f"{dataset:<{width}} {cells}")
    return "\n".join(line.rstrip() for line in lines)


def write_results(results: Results, json_path: Path) -> Path:
    """Write the JSON file and the same numbers as CSV next to it; returns the CSV path."""
    json_path = Path(json_path)
    csv_path = json_path.with_suffix(".csv")
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        with open(csv_path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["dataset", "weights", *METRIC_NAMES])
            for dataset, by_weights in results.items():
                for weights, scores in by_weights.items():
                    writer.writerow([dataset, weights, *(f"{scores[metric]:.6f}" for metric in METRIC_NAMES)])
    except OSError as error:
        raise ConfigError(f"cannot write {json_path} ({error.strerror}); pass a writable --output path") from None
    return csv_path


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
    for path, name in tqdm(list(zip(images, output_names(images))), desc="predict", leave=False, dynamic_ncols=True):
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
    logger.info("Wrote %d mask(s) to %s%s", written, output, f" ({len(images) - written} skipped)"
                if written < len(images) else "")
    return written
