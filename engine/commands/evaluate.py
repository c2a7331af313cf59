"""``eval``: score checkpoints and saved prediction maps on test sets at the ground truth's resolution.

It quantises probabilities to 8 bits as ``predict`` does (``engine.evaluation.cod_metrics.to_uint8_map``), so
the scores ``eval`` reports equal pysodmetrics run on the PNGs ``predict`` writes
(``engine.commands.predict``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from data.layouts import DatasetError, SamplePair, find_pairs
from engine.commands.eval_loader import build_test_loader
from engine.commands.predictor import Predictor, resize_maps, write_png
from engine.commands.saved_maps import MethodScores, score_methods, unique_folder_names
from engine.config import ConfigError
from engine.evaluation.cod_metrics import CODMetrics, to_uint8_map

logger = logging.getLogger(__name__)

Results = Dict[str, Dict[str, Dict[str, float]]]  # dataset -> row (weights or method) -> metric -> value


@dataclass
class Evaluation:
    """Everything one ``eval`` run measured.

    Attributes:
        results: ``{dataset: {row: {metric: value}}}``; rows are the checkpoint's weights
            (``base``, ``ema``) and the ``--predictions`` methods, in that order.
        images: ``{dataset: image/mask pairs in the test set}``.
        scored: ``{dataset: {row: images scored}}`` (fewer than ``images`` when maps are missing).
        missing: ``{dataset: {row: stems without a map}}``, only rows with missing maps.
        per_image: ``(dataset, row, image stem, {metric: value})`` for every scored image.
        methods: ``{row name: folder}`` of the ``--predictions`` methods.
    """

    results: Results = field(default_factory=dict)
    images: Dict[str, int] = field(default_factory=dict)
    scored: Dict[str, Dict[str, int]] = field(default_factory=dict)
    missing: Dict[str, Dict[str, List[str]]] = field(default_factory=dict)
    per_image: List[Tuple[str, str, str, Dict[str, float]]] = field(default_factory=list)
    methods: Dict[str, Path] = field(default_factory=dict)

    def add(self, dataset: str, images: int, rows: Mapping[str, MethodScores]) -> None:
        self.images[dataset] = images
        for name, scored in rows.items():
            self.results.setdefault(dataset, {})[name] = scored.scores
            self.scored.setdefault(dataset, {})[name] = scored.scored
            if scored.missing:
                self.missing.setdefault(dataset, {})[name] = scored.missing
            self.per_image.extend((dataset, name, image, scores) for image, scores in scored.rows)


def check_eval_request(checkpoint: Optional[Path], predictions: Optional[Sequence[Path]], weights: Optional[str],
                       img_size: Optional[int], save_maps: Optional[Path], batch_size: int,
                       num_workers: Optional[int]) -> None:
    """Refuse, in one line, an ``eval`` that has nothing to score or flags that cannot apply."""
    if not checkpoint and not predictions:
        raise ConfigError("eval needs --checkpoint FILE, --predictions DIR [DIR ...] or both")
    if not checkpoint and (weights or img_size or save_maps):
        raise ConfigError("--weights, --img-size and --save-maps apply to a --checkpoint; pass one or drop them")
    if not 1 <= batch_size <= 4096 or (num_workers is not None and not 0 <= num_workers <= 256):
        raise ConfigError(f"--batch-size must be in [1, 4096] and --num-workers in [0, 256] (got {batch_size}, "
                          f"{num_workers})")


def default_eval_workers(predictors: Mapping[str, Predictor]) -> int:
    """Loader workers when ``--num-workers`` is not given: 2 feeding a GPU, none on the CPU."""
    return 2 if any(predictor.device.type == "cuda" for predictor in predictors.values()) else 0


def dataset_names(roots: Sequence[Path]) -> List[str]:
    """Table names of the dataset folders (their folder names, made unique with ``-2``, ``-3``...)."""
    return unique_folder_names(roots)


def check_maps_dir(maps_dir: Path, roots: Sequence[Path], prediction_dirs: Sequence[Path]) -> None:
    """Refuse a ``--save-maps`` folder that is, or lies inside, a test set or a ``--predictions`` folder."""
    target = Path(maps_dir).resolve()
    for source, flag in [(root, "--dataset-path") for root in roots] + [(d, "--predictions") for d in prediction_dirs]:
        source = Path(source).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise ConfigError(f"--save-maps {maps_dir} overlaps {flag} {source}; maps are never written among "
                              "the files eval reads: choose a separate folder")


def maps_target(maps_dir: Path, weights: str, dataset: str) -> Path:
    """``<maps_dir>/<weights>/<dataset>/``, created; refused when it already holds files."""
    folder = Path(maps_dir) / weights / dataset
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"--save-maps: {folder} already holds files; choose another folder (nothing is "
                          "overwritten)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create {folder} ({error.strerror}); pass a writable --save-maps folder") from None
    return folder


def score_checkpoint(predictors: Mapping[str, Predictor], pairs: Sequence[SamplePair], root: Path, dataset: str,
                     batch_size: int = 1, num_workers: int = 0, maps_dir: Optional[Path] = None
                     ) -> Dict[str, MethodScores]:
    """Scores of every predictor on the pairs of one test set, ``batch_size`` images per forward pass.

    DataLoader workers read and resize the pairs. Each prediction is resized to its ground truth's
    original size and quantised to 8 bits before scoring (and, with ``maps_dir``, written there as
    ``<weights>/<dataset>/<stem>.png``). The numbers equal one image per pass up to float rounding
    of batched convolutions (tested within 1e-6).

    Raises:
        DatasetError: an unreadable file, or a mask whose sides are swapped relative to its image.
    """
    first = next(iter(predictors.values()))
    if any((p.img_size, p.normalization) != (first.img_size, first.normalization) for p in predictors.values()):
        raise ValueError("predictors scored together must share the inference side and normalisation")
    folders = {name: maps_target(maps_dir, name, dataset) for name in predictors} if maps_dir else {}
    metrics = {name: CODMetrics() for name in predictors}
    rows: Dict[str, List[tuple]] = {name: [] for name in predictors}
    mismatched = with_object = 0
    loader = build_test_loader(pairs, first.transform, str(root), batch_size, num_workers)
    with tqdm(total=len(pairs), desc=f"eval {Path(root).name}", leave=False, dynamic_ncols=True,
              disable=not logger.isEnabledFor(logging.INFO)) as bar:  # -q: no bar either
        for samples in loader:
            for sample in samples:
                if sample.problem:
                    raise DatasetError(sample.problem)
                mismatched += sample.ground_truth.shape != sample.image_size
                with_object += bool(sample.ground_truth.any())
            images = torch.stack([sample.image for sample in samples]).to(first.device)
            sizes = [sample.ground_truth.shape for sample in samples]
            for name, predictor in predictors.items():
                for sample, probabilities in zip(samples, resize_maps(predictor.probabilities(images), sizes)):
                    prediction = to_uint8_map(probabilities)
                    metrics[name].step(prediction, sample.ground_truth)
                    rows[name].append((sample.name, metrics[name].last_image()))
                    if name in folders:
                        write_png(folders[name] / f"{sample.name}.png", prediction)
            bar.update(len(samples))
    if mismatched:
        logger.info("%s: %d image(s) differ in size from their mask; scored at the mask's size", root, mismatched)
    if not with_object:
        logger.warning("All %d masks in %s are empty (no pixel > 127); check the mask format (gray 0/255, colour "
                       "and palette PNGs are read) or --dataset-path", len(pairs), root)
    return {name: MethodScores(metric.results(), len(metric), [], rows[name]) for name, metric in metrics.items()}


def evaluate_dataset(predictors: Mapping[str, Predictor], root: Path, include_noncam: bool = False,
                     skip_unpaired: bool = False, batch_size: int = 1, num_workers: int = 0) -> Dict[str, Dict]:
    """``{weights: {metric: value}}`` of every predictor on one test set (COD10K-v3 root: its ``Test/``).

    ``skip_unpaired`` scores the complete pairs of a pack with lonely files.

    Raises:
        DatasetError: unpaired files (without ``skip_unpaired``), an unreadable file, or a mask
            whose width and height are swapped relative to its image.
    """
    pairs = find_pairs(root, "test", include_noncam, skip_unpaired)
    scored = score_checkpoint(predictors, pairs, Path(root), Path(root).name, batch_size, num_workers)
    return {name: rows.scores for name, rows in scored.items()}


def evaluate(predictors: Mapping[str, Predictor], roots: Sequence[Path], include_noncam: bool = False,
             skip_unpaired: bool = False, prediction_dirs: Sequence[Path] = (), batch_size: int = 1,
             num_workers: int = 0, maps_dir: Optional[Path] = None) -> Evaluation:
    """Score a checkpoint's predictors and/or saved prediction maps on several test sets.

    Args:
        predictors: ``{weights: Predictor}`` (may be empty when only maps are scored).
        roots: test-set folders (COD10K-v3 roots, test packs, ``synth`` output).
        include_noncam: also score COD10K NonCAM images.
        skip_unpaired: score the complete pairs of packs with lonely files.
        prediction_dirs: method folders of saved maps (see ``engine.commands.saved_maps``);
            each becomes a table row named after its folder.
        batch_size: images per forward pass.
        num_workers: DataLoader workers reading the test images.
        maps_dir: write the checkpoint's scored maps to ``<maps_dir>/<weights>/<dataset>/``.
    """
    if not predictors and not prediction_dirs:
        raise ValueError("nothing to score: pass predictors or prediction folders")
    if maps_dir is not None:
        check_maps_dir(maps_dir, roots, prediction_dirs)
    methods = dict(zip(unique_folder_names(prediction_dirs, taken=list(predictors)), map(Path, prediction_dirs)))
    evaluation = Evaluation(methods=methods)
    for name, root in zip(dataset_names(roots), roots):
        pairs = find_pairs(root, "test", include_noncam, skip_unpaired)
        rows = score_checkpoint(predictors, pairs, Path(root), name, batch_size, num_workers,
                                maps_dir) if predictors else {}
        rows.update(score_methods(methods, pairs, name, single_dataset=len(roots) == 1))
        evaluation.add(name, len(pairs), rows)
    return evaluation
