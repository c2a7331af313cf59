"""What ``train --dry-run`` checks beyond the plan: everything a real run would fail on later (the
encoder's weights, each dataset root, the output folder, the packages), and its closing summary
(images, steps per epoch, and a time per epoch only where this run measured one)."""
from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path
from typing import List, Optional, Tuple

from data.layouts import DATASET_FLAG, DatasetError, describe_layout, find_pairs, has_separate_test_split
from engine.config import ConfigError, TrainConfig
from engine.packages import check_training_packages
from engine.training.data_module import DataSources, scan_data
from engine.training.stages import StagePlan
from models.weights import pretrained_weights_source, read_state_dict

GIB = 1024 ** 3
MEASURED_EPOCHS = 3  # the time estimate: median of this run's last epochs in the stage it continues


def setup_lines(config: TrainConfig, resume_path: Optional[Path],
                origin: str = DATASET_FLAG) -> Tuple[List[str], DataSources]:
    """The checks' lines and the run's data (scanned as the real run scans it).

    Raises:
        PretrainedWeightsError, DatasetError, ConfigError, MissingPackageError: what the real run
            would fail on, in the same one line (exit 2).
    """
    lines = [*root_lines(config, origin)]
    sources = scan_data(config, origin)  # the real run's order: data and packages, then the weights
    lines += [output_line(config), "packages: " + ", ".join(check_training_packages(config)) + " installed",
              weights_line(config, resume_path)]
    return ["checks (what the real run would otherwise fail on later):", *[f"  {line}" for line in lines]], sources


def weights_line(config: TrainConfig, resume_path: Optional[Path]) -> str:
    """Where the encoder's first weights come from; raises PretrainedWeightsError when they cannot be had."""
    if resume_path is not None:
        return f"encoder weights: from {resume_path} (a resume loads nothing pretrained)"
    if config.pretrained_path:
        tensors = read_state_dict(config.pretrained_path)
        return f"encoder weights: --pretrained-path {config.pretrained_path} ({len(tensors)} tensors read)"
    if not config.pretrained_encoder(synthetic=config.dataset_path is None):
        return "encoder weights: random (" + ("--no-pretrained" if config.pretrained is False else
                                              "the synthetic set trains from scratch unless --pretrained") + ")"
    return f"encoder weights: timm's pretrained {config.backbone}, {pretrained_weights_source(config.backbone)}"


def root_lines(config: TrainConfig, origin: str = DATASET_FLAG) -> List[str]:
    """One line per dataset root: its layout and its images per split."""
    if config.dataset_path is None:
        return [f"dataset: the built-in synthetic scenes (no {DATASET_FLAG})"]
    lines = []
    try:
        for root in config.dataset_roots:
            layout = describe_layout(root)
            train = len(find_pairs(root, "train", config.include_noncam, config.skip_unpaired))
            test = (f"{len(find_pairs(root, 'test', config.include_noncam, config.skip_unpaired))} test images"
                    if has_separate_test_split(root) else "no test split of its own")
            lines.append(f"dataset {root} ({layout} layout): {train} train images, {test}")
    except DatasetError as error:
        raise error.naming(origin) from None
    return lines


def output_line(config: TrainConfig) -> str:
    """``--checkpoint-dir``: writable (it or the folder it would be made in), and the free space; creates nothing.

    Raises:
        ConfigError: the folder (or the nearest existing folder above it) cannot be written.
    """
    folder = Path(config.checkpoint_dir)
    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--checkpoint-dir {folder} is not writable ({existing} is "
                          + ("a file" if not existing.is_dir() else "read-only")
                          + "); pass a writable folder such as /kaggle/working/checkpoints")
    state = "exists" if existing == folder else f"to be made in {existing}"
    return f"output folder: {folder} ({state}, writable, {shutil.disk_usage(existing).free / GIB:.1f} GiB free)"


def summary_lines(config: TrainConfig, plan: StagePlan, epoch: int, sources: DataSources,
                  resume_path: Optional[Path]) -> List[str]:
    """The closing lines: images found, optimizer steps per epoch, and a time estimate only where measured."""
    if sources.train_pairs is None:
        images = f"{config.synthetic_train_size} synthetic training scenes per epoch, {config.synthetic_val_size} " \
                 "for validation"
    else:
        images = (f"{len(sources.train_pairs)} training images, {len(sources.val_pairs)} validation images "
                  f"({sources.val_source})")
    stages = [stage for stage in (1, 2)
              if plan.stage_end(stage) > max(epoch, 0 if stage == 1 else plan.state.stage2_start)]
    steps = ", ".join(f"stage {stage} {plan.steps_per_epoch(stage)}" for stage in stages) or "none"
    return [f"images found: {images}", f"optimizer steps per epoch: {steps}",
            "time: " + measured_time(config, plan, epoch, resume_path)]


def measured_time(config: TrainConfig, plan: StagePlan, epoch: int, resume_path: Optional[Path]) -> str:
    """A time estimate from the epochs this run has measured (``metrics.jsonl`` beside the checkpoint
    it resumes), in the stage it continues in; none otherwise."""
    none = "no estimate (nothing measured yet for this run; each epoch's log line gives its seconds)"
    history = resume_path.parent / "metrics.jsonl" if resume_path is not None else None
    if history is None or not history.is_file():
        return none
    stage = plan.stage_of(epoch)
    seconds = []
    for line in history.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("stage") == stage and isinstance(row.get("seconds"), (int, float)):
            seconds.append(float(row["seconds"]))
    if not seconds:
        return f"no estimate (this run has measured no stage-{stage} epoch yet)"
    per_epoch = statistics.median(seconds[-MEASURED_EPOCHS:])
    left = plan.stage_end(stage) - epoch
    return (f"about {per_epoch:.0f} s per stage-{stage} epoch, the median of this run's last "
            f"{len(seconds[-MEASURED_EPOCHS:])} ({history}, on the machine that ran them): "
            f"{left} stage-{stage} epoch(s) left, about {per_epoch * left / 3600:.2f} h")
