"""What ``eval`` prints and writes: the table, the JSON a paper can cite, the CSVs.

JSON layout (``"schema": 2``)::

    {"schema": 2,
     "meta": {"project_version", "git_commit", "checkpoint", "weights", "tta", "img_size",
              "batch_size", "predictions": {method: folder}, "metrics": {name: definition},
              "datasets": {name: {"path", "images", "scored": {row: n}, "missing": {row: n}}}},
     "results": {dataset: {row: {metric: value}}}}

Rows are the checkpoint's weights (``base``, ``ema``) and the ``--predictions`` methods.
"""
from __future__ import annotations

import csv
import json
import logging
import subprocess
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from engine import __version__
from engine.config import ConfigError
from engine.evaluation.cod_metrics import METRIC_NAMES

logger = logging.getLogger(__name__)

JSON_SCHEMA = 2
METRIC_DEFINITIONS = {
    "Smeasure": "structure measure S_alpha, alpha = 0.5 (Fan et al. 2017), mean over images",
    "meanEm": "enhanced-alignment measure at 256 thresholds, curve averaged over images, then its mean",
    "maxEm": "the same image-averaged E-measure curve, its maximum over thresholds",
    "adpEm": "E-measure at each image's adaptive threshold (2 x mean of the map), mean over images",
    "wFmeasure": "weighted F-measure F^w_beta, beta^2 = 1 (Margolin et al. 2014), mean over images",
    "MAE": "mean absolute error of the min-max normalised map, mean over images",
    "IoU": "intersection over union at threshold 0.5 (8-bit map > 127), mean over images",
    "Dice": "Dice at threshold 0.5, mean over images",
}


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """One line per (dataset, row): ``dataset  weights/method  Smeasure meanEm ... Dice``."""
    rows = [(dataset, name) for dataset, by_row in results.items() for name in by_row]
    dataset_width = max(len("dataset"), *(len(dataset) for dataset, _ in rows))
    name_width = max(len("method"), *(len(name) for _, name in rows))
    cell = max(len(metric) for metric in METRIC_NAMES) + 1
    lines = [f"{'dataset':<{dataset_width}} {'method':<{name_width}} " + "".join(f"{m:<{cell}}" for m in METRIC_NAMES)]
    for dataset, name in rows:
        scores = results[dataset][name]
        cells = "".join(f"{scores[metric]:<{cell}.4f}" for metric in METRIC_NAMES)
        lines.append(f"{dataset:<{dataset_width}} {name:<{name_width}} {cells}")
    return "\n".join(line.rstrip() for line in lines)


def git_commit() -> Optional[str]:
    """The commit of this source tree when it is a git checkout (None otherwise)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, timeout=5,
                              capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip() if done.returncode == 0 else ""
    return commit or None


def eval_metadata(evaluation, roots: Sequence[Path], checkpoint: Optional[Path], weights: Sequence[str],
                  tta: Optional[str], img_size: Optional[int], batch_size: int,
                  predictions: Mapping[str, Path]) -> Dict[str, Any]:
    """The ``meta`` block: what produced the numbers, so a table can cite them exactly."""
    datasets = {}
    for (name, count), root in zip(evaluation.images.items(), roots):
        datasets[name] = {"path": str(Path(root).resolve()), "images": count,
                          "scored": evaluation.scored.get(name, {}),
                          "missing": {row: len(stems) for row, stems in evaluation.missing.get(name, {}).items()}}
    return {
        "project_version": __version__, "git_commit": git_commit(),
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None, "weights": list(weights),
        "tta": tta, "img_size": img_size, "batch_size": batch_size,
        "predictions": {name: str(Path(folder).resolve()) for name, folder in predictions.items()},
        "metrics": METRIC_DEFINITIONS, "datasets": datasets,
    }


def _writable(path: Path, flag: str):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", newline="", encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {path} ({error.strerror}); pass a writable {flag} path") from None


def write_results(results, meta: Mapping[str, Any], json_path: Path) -> Path:
    """Write the JSON file and the table as CSV next to it; returns the CSV path."""
    json_path = Path(json_path)
    csv_path = json_path.with_suffix(".csv")
    with _writable(json_path, "--output") as stream:
        stream.write(json.dumps({"schema": JSON_SCHEMA, "meta": meta, "results": results}, indent=2) + "\n")
    with _writable(csv_path, "--output") as stream:
        writer = csv.writer(stream)
        writer.writerow(["dataset", "method", *METRIC_NAMES])
        for dataset, by_row in results.items():
            for name, scores in by_row.items():
                writer.writerow([dataset, name, *(f"{scores[metric]:.6f}" for metric in METRIC_NAMES)])
    return csv_path


def write_per_image(per_image: Sequence[tuple], csv_path: Path) -> None:
    """``--per-image``: one row per (dataset, method, image) with that image's scores.

    ``meanEm`` / ``maxEm`` of a row are the mean / max of that image's own E-measure curve.
    """
    with _writable(Path(csv_path), "--per-image") as stream:
        writer = csv.writer(stream)
        writer.writerow(["dataset", "method", "image", *METRIC_NAMES])
        for dataset, name, image, scores in per_image:
            writer.writerow([dataset, name, image, *(f"{scores[metric]:.6f}" for metric in METRIC_NAMES)])


def write_eval_outputs(evaluation, predictors: Mapping[str, Any], roots: Sequence[Path], checkpoint: Optional[Path],
                       tta: str, batch_size: int, json_path: Optional[Path], per_image_path: Optional[Path]) -> None:
    """Write ``eval --output`` (JSON + CSV with the run's metadata) and ``--per-image`` when asked."""
    if json_path:
        side = next(iter(predictors.values())).img_size if predictors else None
        meta = eval_metadata(evaluation, roots, checkpoint, list(predictors), tta if predictors else None, side,
                             batch_size, evaluation.methods)
        csv_path = write_results(evaluation.results, meta, json_path)
        logger.info("Wrote %s and %s", json_path, csv_path)
    if per_image_path:
        write_per_image(evaluation.per_image, per_image_path)
        logger.info("Wrote %d per-image rows to %s", len(evaluation.per_image), per_image_path)
