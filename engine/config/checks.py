"""What each setting accepts: the numeric ranges and the cross-checks between settings."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from engine.config.fields import (AMP_MODES, BEST_METRICS, CACHE_MODES, DEVICES, NORMALIZATION_MODES, PROGRESS_MODES,
                                  SCHEDULERS, TrainConfig)
from engine.config.values import ConfigError, parse_duration, parse_epoch_selection


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: finite, within ``[low, high]`` (ends open when asked)."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    hint: str = ""

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        def show(bound: float) -> str:
            return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"

        return f"{'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"


HUGE = 1_000_000  # counts beyond this are typos (a run of a million epochs, a million workers...)
# Every numeric setting and what it accepts (a test keeps this table complete). Combinations, such as
# --top-k <= --num-experts or --min-lr <= the LRs, are checked in ``validate``.
NUMBER_RANGES: Dict[str, Range] = {
    "val_fraction": Range(0, 1, high_open=True),
    "img_size": Range(32, 4096, hint="4096 px is already about 200 MB of activations per image"),
    "num_workers": Range(0, 256, hint="a few per CPU core is plenty"),
    "synthetic_train_size": Range(1, HUGE),
    "synthetic_val_size": Range(1, HUGE),
    "synthetic_difficulty": Range(0, 1, low_open=True),
    "num_experts": Range(1, 64),
    "top_k": Range(1, 64),
    "decoder_channels": Range(1, 2048),
    "router_noise": Range(0, 100),
    "moe_loss_weight": Range(0, 1000),
    "deep_supervision_weight": Range(0, 1000),
    "side_supervision_weight": Range(0, 1000),
    "min_feature_stride": Range(1, 8),
    "detail_channels": Range(0, 1024, hint="0 turns it off"),
    "batch_size": Range(1, 4096),
    "stage2_batch_size": Range(1, 4096),
    "accumulation_steps": Range(1, 4096),
    "epochs": Range(1, HUGE),
    "stage1_epochs": Range(0, HUGE),
    "unfreeze_interval": Range(1, HUGE),
    "lr": Range(0, 1, low_open=True, hint="try 2.5e-4"),
    "stage2_lr": Range(0, 1, low_open=True, hint="try 2e-4"),
    "backbone_lr_scale": Range(0, 100, low_open=True, hint="1 is the default"),
    "decoder_lr_scale": Range(0, 100, low_open=True, hint="4 is the default for a pretrained encoder"),
    "weight_decay": Range(0, 10, hint="AdamW's usual values are 0.01-0.1"),
    "grad_clip": Range(0, HUGE, hint="0 disables clipping"),
    "max_bad_steps": Range(1, HUGE),
    "min_lr": Range(0, 1),
    "warmup_epochs": Range(0, HUGE),
    "ema_decay": Range(0, 1, high_open=True, hint="0.999 is typical"),
    "stop_after_epochs": Range(1, HUGE),
    "save_every_minutes": Range(0, HUGE, low_open=True),
    "early_stop_patience": Range(0, HUGE, hint="0 turns it off"),
    "loss_ema_beta": Range(0, 1, high_open=True, hint="0.99 is typical"),
    "grad_monitor_interval": Range(0, HUGE, hint="0 disables it"),
    "drift_window": Range(1, HUGE),
    "drift_threshold": Range(0, HUGE, low_open=True, hint="0.5 = +50 percent"),
    "gain_threshold": Range(0, HUGE, low_open=True),
    "drift_consecutive": Range(1, HUGE),
    "seed": Range(0, 2**32 - 1, hint="NumPy and PyTorch seeds are 32-bit"),
    "keep_checkpoints": Range(0, HUGE, hint="0 keeps none"),
    "log_interval": Range(1, HUGE),
    "loss_normalization_beta": Range(0, 1, high_open=True, hint="0.99 averages over ~100 micro-batches"),
}


def check_number(name: str, value: float) -> None:
    """Raise ``ConfigError`` unless ``value`` is finite and in ``NUMBER_RANGES[name]``."""
    allowed = NUMBER_RANGES[name]
    if value not in allowed:
        hint = f"; {allowed.hint}" if allowed.hint else ""
        raise ConfigError(f"--{name.replace('_', '-')} must be a finite number in {allowed.describe()} "
                          f"(got {value}){hint}")


def check_continuation(continue_from: Optional[str], resume_from: Optional[str], checkpoint_dir: str) -> None:
    """``--continue-from`` resumes by itself, into a folder of its own."""
    if continue_from is None:
        return
    _require(resume_from is None, "--continue-from already resumes the run it names; drop --resume-from")
    _require(Path(continue_from).resolve() != Path(checkpoint_dir).resolve(),
             f"--continue-from {continue_from} is also the --checkpoint-dir; to resume a run in its own folder use "
             "--resume-from auto, or give this session a new --checkpoint-dir")


def validate(config: TrainConfig) -> None:
    """Check ranges and combinations; raise ``ConfigError`` with one actionable line."""
    for name in NUMBER_RANGES:
        value = getattr(config, name)
        if value is not None:  # None: the documented "unset" of an optional setting
            check_number(name, value)
    _require(config.min_lr <= min(config.lr, config.stage2_lr),
             f"--min-lr ({config.min_lr}) must not exceed --lr ({config.lr}) or --stage2-lr ({config.stage2_lr}): "
             "the cosine decays from each LR down to it")
    _require(config.stage1_epochs <= config.epochs,
             f"--stage1-epochs ({config.stage1_epochs}) must be between 0 and --epochs ({config.epochs})")
    _require(config.top_k <= config.num_experts,
             f"--top-k ({config.top_k}) must be between 1 and --num-experts ({config.num_experts})")
    _require(config.min_feature_stride in (1, 2, 4, 8),
             f"--min-feature-stride must be 1, 2, 4 or 8 (got {config.min_feature_stride})")
    _require(config.scheduler in SCHEDULERS,
             f"--scheduler {config.scheduler!r} is unknown; choose one of {', '.join(SCHEDULERS)}")
    _require(config.best_metric in BEST_METRICS,
             f"--best-metric {config.best_metric!r} is unknown; choose one of {', '.join(BEST_METRICS)}")
    _require(config.progress in PROGRESS_MODES,
             f"--progress {config.progress!r} is unknown; choose one of {', '.join(PROGRESS_MODES)}")
    _require(config.cache in CACHE_MODES, f"--cache {config.cache!r} is unknown; choose one of {', '.join(CACHE_MODES)}")
    _require(config.amp in AMP_MODES, f"--amp {config.amp!r} is unknown; choose one of {', '.join(AMP_MODES)}")
    _require(config.device in DEVICES, f"--device {config.device!r} is unknown; choose one of {', '.join(DEVICES)}")
    _require(config.devices == "auto" or (config.devices.isdigit() and int(config.devices) >= 1),
             f"--devices must be auto or a positive number of GPUs (got {config.devices!r})")
    sides = config.train_sides
    _require(min(sides) >= 32, f"--train-scales {config.train_scales} makes batches of {min(sides)} px at --img-size "
                               f"{config.img_size}; the smallest scale must give at least 32 px")
    if config.time_limit is not None:
        _require(parse_duration(config.time_limit) > 0, f"--time-limit must be positive (got {config.time_limit})")
    _validate_monitors(config)
    from models.encoder import check_backbone_name

    try:
        check_backbone_name(config.backbone)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_continuation(config.continue_from, config.resume_from, config.checkpoint_dir)
    for name in ("cache_dir", "checkpoint_dir"):
        folder = getattr(config, name)
        _require(folder is None or not Path(folder).exists() or Path(folder).is_dir(),
                 f"--{name.replace('_', '-')} {folder} is a file, not a folder; choose another path")
    if config.pretrained_path is not None:
        _require(Path(config.pretrained_path).is_file(),
                 f"--pretrained-path {config.pretrained_path} is not a file; download the weights and point to them")


def _validate_monitors(config: TrainConfig) -> None:
    _require(config.loss_normalization in NORMALIZATION_MODES,
             f"--loss-normalization {config.loss_normalization!r} is unknown; choose one of {', '.join(NORMALIZATION_MODES)}")
    try:
        parse_epoch_selection(config.eval_epochs)
    except ValueError as error:
        raise ConfigError(f"--eval-epochs: {error}") from None
    _require(not config.auto_adjust_lr or config.diagnosis_enabled,
             "--auto-adjust-lr needs post-epoch evaluation; drop --eval-epochs none")
