"""Score prediction maps saved on disk (any method's published maps, or ``eval --save-maps``).

How a map is found and read, as the community's toolboxes do it (PySODEvalToolkit):

- a method folder holds one sub-folder per test set, named like the set's folder
  (``AINet/CAMO/*.png``); a method folder without such a sub-folder is itself the maps of the set
  when only one set is scored;
- maps pair with ground truths by file stem (``camourflage_00012.png`` <-> ``camourflage_00012.jpg``);
- a map is read as 8-bit gray (colour maps are converted, 16-bit scaled), and resized to its ground
  truth's size with bilinear interpolation (``cv2.resize(..., INTER_LINEAR)``) when the sizes differ;
- ground truths that have no map are counted, named in a warning and left out of that method's
  scores (so compare methods on sets where none is missing).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np

from data.image_io import read_image, read_mask
from data.layouts import IMAGE_EXTENSIONS, DatasetError, SamplePair
from engine.evaluation.cod_metrics import CODMetrics

logger = logging.getLogger(__name__)


@dataclass
class MethodScores:
    """One method (saved maps, or one weight set of a checkpoint) on one test set.

    Attributes:
        scores: ``{metric: value}`` over the images that have a map.
        scored: how many images were scored.
        missing: stems of the ground truths without a map.
        rows: ``(image stem, {metric: value})`` per scored image.
    """

    scores: Dict[str, float]
    scored: int
    missing: List[str] = field(default_factory=list)
    rows: List[tuple] = field(default_factory=list)


def maps_folder(method_dir: Path, dataset_name: str, single_dataset: bool) -> Path:
    """The folder holding ``method_dir``'s maps of the test set called ``dataset_name``.

    Raises:
        DatasetError: ``method_dir`` is not a folder, or has no sub-folder for this set while
            several sets are scored.
    """
    method_dir = Path(method_dir)
    if not method_dir.is_dir():
        raise DatasetError(f"--predictions {method_dir} is not a folder; pass folders of prediction maps "
                           "(one sub-folder per test set, or the maps themselves for one set)")
    exact = method_dir / dataset_name
    if exact.is_dir():
        return exact
    for child in sorted(method_dir.iterdir()):
        if child.is_dir() and child.name.lower() == dataset_name.lower():
            return child
    if single_dataset:
        return method_dir
    raise DatasetError(f"--predictions {method_dir} has no sub-folder {dataset_name}/ for the test set "
                       f"{dataset_name}; put that set's maps in {exact}")


def index_maps(folder: Path) -> Dict[str, Path]:
    """``{stem: map file}`` of the visible image files of ``folder``.

    Raises:
        DatasetError: two maps with the same stem (e.g. ``a.png`` and ``a.jpg``).
    """
    found: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            raise DatasetError(f"{folder} holds two maps for {path.stem} ({found[path.stem].name}, {path.name}); "
                               "keep one of them")
        found[path.stem] = path
    return found


def read_prediction_map(path: Path, size: Optional[tuple] = None) -> np.ndarray:
    """A saved map as ``(H, W)`` uint8 gray, resized (bilinear) to ``size = (height, width)`` if given.

    Raises:
        DatasetError: the file is missing, truncated or not an image.
    """
    rgb = read_image(path)  # any bit depth, alpha and palette handled as for photographs
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        gray = np.ascontiguousarray(rgb[..., 0])
    else:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if size is not None and gray.shape != tuple(size):
        gray = cv2.resize(gray, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    return gray


def score_maps(method_dir: Path, pairs: Sequence[SamplePair], dataset_name: str, single_dataset: bool) -> MethodScores:
    """Score one method's maps of one test set against its ground truths (at their own size).

    Raises:
        DatasetError: no map of this set at all, an unreadable map or mask.
    """
    folder = maps_folder(method_dir, dataset_name, single_dataset)
    maps = index_maps(folder)
    missing = [pair.name for pair in pairs if pair.name not in maps]
    if len(missing) == len(pairs):
        raise DatasetError(f"none of the {len(pairs)} images of {dataset_name} has a map in {folder} "
                           f"(maps pair by file stem, e.g. {pairs[0].name}.png); check --predictions")
    metrics = CODMetrics()
    rows = []
    for pair in pairs:
        if pair.name in missing:
            continue
        ground_truth = read_mask(pair.mask) * np.uint8(255)
        metrics.step(read_prediction_map(maps[pair.name], ground_truth.shape), ground_truth)
        rows.append((pair.name, metrics.last_image()))
    if missing:
        logger.warning("%s: %d of %d images have no map in %s (e.g. %s); scored the other %d", dataset_name,
                       len(missing), len(pairs), folder, ", ".join(missing[:3]), len(rows))
    return MethodScores(metrics.results(), len(rows), missing, rows)


def unique_folder_names(folders: Sequence[Path], taken: Sequence[str] = ()) -> List[str]:
    """Table names of folders: their own names, made unique (``-2``, ``-3``...) among themselves and ``taken``."""
    names: List[str] = list(taken)
    for folder in folders:
        base = Path(folder).resolve().name or str(folder)
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names[len(taken):]


def score_methods(method_dirs: Mapping[str, Path], pairs: Sequence[SamplePair], dataset_name: str,
                  single_dataset: bool) -> Dict[str, MethodScores]:
    """``{method name: MethodScores}`` for every method folder on one test set."""
    return {name: score_maps(folder, pairs, dataset_name, single_dataset) for name, folder in method_dirs.items()}
