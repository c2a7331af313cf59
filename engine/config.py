"""Typed training configuration: YAML/flag values -> ``TrainConfig`` -> validated settings.

Configuration flows one way: ``train_ultimate.py`` parses flags, this module merges them over the
YAML file and the dataclass defaults, validates the result and hands out typed sub-configs.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import yaml

from models.config import ModelConfig, default_top_k

PRETRAINED_DECODER_LR_SCALE = 4.0  # decoder LR / encoder LR when the encoder is pretrained (README, real_data.py)
SCHEDULERS = ("cosine", "constant", "warmup-constant-cosine")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "off", "fp16", "bf16")
CACHE_MODES = ("none", "memory", "disk")  # data/cache.py implements them (a test keeps the two equal)
PROGRESS_MODES = ("auto", "bar", "log", "off")
BEST_METRICS = ("iou", "sm", "mae", "wfm")  # sm / wfm: pysodmetrics at each validation mask's own size
EVAL_EPOCHS_OFF = ("none", "off", "")


class ConfigError(ValueError):
    """A user error in flags or YAML; its message is one line naming the problem and the fix."""


def eval_epochs_disabled(text: str) -> bool:
    """``--eval-epochs`` values that switch the post-epoch diagnosis off."""
    return str(text).strip().lower() in EVAL_EPOCHS_OFF


@dataclass
class TrainConfig:
    """Every setting of ``train_ultimate.py train``; field names equal the flag names."""

    # Data
    dataset_path: Optional[str] = None
    include_noncam: bool = False
    skip_bad_samples: bool = False
    skip_unpaired: bool = False  # use only complete image/mask pairs (CAMO ships 2 lonely masks)
    val_fraction: float = 0.1
    img_size: int = 384
    num_workers: Optional[int] = None  # None: the CPU cores / the ranks, at most 4 (engine.data_module)
    persistent_workers: bool = True  # workers live across epochs (the epoch travels with each index)
    cache: str = "none"  # none | memory | disk (data/cache.py)
    cache_dir: Optional[str] = None  # None: <checkpoint_dir>/resize-cache
    synthetic_train_size: int = 400
    synthetic_val_size: int = 100
    synthetic_difficulty: float = 0.15
    # Model
    backbone: str = "edgenext_base"
    num_experts: int = 7
    top_k: Optional[int] = None  # None: models.config.default_top_k(num_experts), resolved on construction
    decoder_channels: int = 64
    router_noise: float = 0.1
    pretrained: Optional[bool] = None  # None: on for real datasets, off for the synthetic set
    pretrained_path: Optional[str] = None
    moe_loss_weight: float = 0.01
    deep_supervision_weight: float = 0.0  # > 0: per-expert logits get their own structure loss
    side_supervision_weight: float = 0.5  # > 0: each pyramid level's side logits get a structure loss
    min_feature_stride: int = 4  # finest encoder stride of the FPN and experts (stride-2 goes to the detail head)
    detail_channels: int = 16  # width of the stride-2 detail refinement (0: off)
    # Optimisation and stages
    batch_size: int = 8
    stage2_batch_size: Optional[int] = None  # None: same as batch_size
    accumulation_steps: int = 1
    epochs: int = 120
    stage1_epochs: int = 30
    skip_stage1: bool = False
    progressive_unfreeze: bool = False
    unfreeze_interval: int = 2
    lr: float = 2.5e-4
    stage2_lr: float = 2e-4
    # Measured on real CAMO photographs with ImageNet weights (README, real_data.py): an encoder
    # scale of 0.1 left the encoder barely adapted, and the random decoder learns best at 4x.
    backbone_lr_scale: float = 1.0  # encoder LR in stage 2 = the stage LR x this
    decoder_lr_scale: Optional[float] = None  # decoder + head LR = the stage LR x this; None: 4 if pretrained, else 1
    freeze_encoder_bn: Optional[bool] = None  # None: on when the encoder starts from pretrained weights
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    max_bad_steps: int = 20
    scheduler: str = "cosine"
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    # Weight EMA
    use_ema: bool = False
    ema_decay: float = 0.999
    ema_warmup: bool = False
    # Checkpoints, resume and budget
    checkpoint_dir: str = "checkpoints"
    resume_from: Optional[str] = None
    stop_after_epochs: Optional[int] = None
    time_limit: Optional[str] = None
    restart_schedule: bool = False  # on resume: warm-restart the current stage's LR segment
    restart_epoch: bool = False  # on a mid-epoch resume: redo the epoch from its first batch
    overwrite: bool = False  # a new run may replace the run already in --checkpoint-dir
    save_every_minutes: Optional[float] = None
    best_metric: str = "iou"  # what picks best_model.pth (base or EMA weights, whichever is better)
    early_stop_patience: Optional[int] = None  # None or 0: off; N: stop after N epochs without a better --best-metric
    # Monitors
    loss_ema: bool = True
    loss_ema_beta: float = 0.99
    grad_monitor_interval: int = 50  # 0: drift monitor off
    drift_window: int = 10
    drift_threshold: float = 0.5  # measured: healthy runs rose at most +10 % within a window
    gain_threshold: Optional[float] = None  # None: 2.0 x the blocks' early gains (gradient_drift.py)
    drift_consecutive: int = 3
    eval_epochs: str = "2+"
    auto_adjust_lr: bool = False
    expert_monitor: bool = True
    loss_normalization: str = "none"  # none | ema
    loss_normalization_beta: float = 0.99  # EMA decay of --loss-normalization ema (per criterion call)
    # Runtime
    seed: int = 42
    deterministic: bool = False
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model (engine/compile.py)
    keep_checkpoints: int = 3
    log_interval: int = 20
    progress: str = "auto"  # auto: bars on a terminal, plain log lines otherwise (Kaggle's saved logs)

    def __post_init__(self) -> None:
        # Resolved here, so the saved config and the checkpoint signature hold the number used.
        if self.top_k is None:
            self.top_k = default_top_k(self.num_experts)
        # Both exist for a pretrained encoder: its BatchNorm statistics are worth keeping (random ones
        # are not), and a random decoder beside it learns faster than it; from scratch, neither.
        pretrained = self.pretrained_encoder(synthetic=self.dataset_path is None)
        if self.freeze_encoder_bn is None:
            self.freeze_encoder_bn = pretrained
        if self.decoder_lr_scale is None:
            self.decoder_lr_scale = PRETRAINED_DECODER_LR_SCALE if pretrained else 1.0

    def pretrained_encoder(self, synthetic: bool) -> bool:
        """Whether the encoder starts from pretrained weights: ``--pretrained-path``, or
        ``--pretrained`` (default: on for real data, off for the synthetic set)."""
        pretrained = self.pretrained if self.pretrained is not None else not synthetic
        return pretrained or self.pretrained_path is not None

    def model_config(self, synthetic: bool, weights_from_checkpoint: bool = False) -> ModelConfig:
        """The model's settings; ``pretrained`` defaults to on for real data, off for synthetic.

        ``weights_from_checkpoint``: a checkpoint will overwrite every weight, so nothing pretrained
        is loaded or downloaded (resume, eval, predict work offline).
        """
        if weights_from_checkpoint:
            return dataclasses.replace(self.model_config(synthetic), pretrained=False, pretrained_path=None)
        return ModelConfig(
            backbone=self.backbone,
            num_experts=self.num_experts,
            top_k=self.top_k,
            decoder_channels=self.decoder_channels,
            min_feature_stride=self.min_feature_stride,
            detail_channels=self.detail_channels,
            router_noise=self.router_noise,
            deep_supervision=self.deep_supervision_weight > 0,
            side_outputs=self.side_supervision_weight > 0,  # unsupervised side heads would get no gradient
            pretrained=self.pretrained_encoder(synthetic),
            pretrained_path=self.pretrained_path,
        )

    @property
    def diagnosis_enabled(self) -> bool:
        """Whether the post-epoch diagnosis runs at all (``--eval-epochs none`` / ``off``: no)."""
        return not eval_epochs_disabled(self.eval_epochs)

    @property
    def resolved_stage2_batch_size(self) -> int:
        return self.stage2_batch_size or self.batch_size

    @property
    def time_limit_seconds(self) -> Optional[float]:
        return parse_duration(self.time_limit) if self.time_limit else None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
# Settings that belong to one invocation: a resume never inherits them from the checkpoint.
PER_INVOCATION_KEYS = ("resume_from", "stop_after_epochs", "time_limit", "restart_schedule", "restart_epoch",
                       "overwrite")
# Settings that shape the LR plan: changing any of them on resume re-plans the schedule.
SCHEDULE_KEYS = (
    "epochs", "stage1_epochs", "skip_stage1", "lr", "stage2_lr", "backbone_lr_scale", "decoder_lr_scale", "scheduler",
    "min_lr", "warmup_epochs", "batch_size", "stage2_batch_size", "accumulation_steps",
)


def parse_duration(text: str) -> float:
    """``'11.5h'``, ``'90m'``, ``'3600s'`` or ``'3600'`` -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([hms]?)\s*", str(text))
    if not match:
        raise ConfigError(f"--time-limit {text!r} is not a duration; write e.g. 11.5h, 90m or 3600s")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"h": 3600.0, "m": 60.0, "s": 1.0}[unit]


def normalise_key(key: str) -> str:
    return str(key).strip().lstrip("-").replace("-", "_")


def closest_key_hint(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0].replace('_', '-')!r}?" if close else ""


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML config into a dict with normalised (underscore) keys; unknown keys are errors."""
    config_path = Path(path)
    if config_path.is_dir():
        raise ConfigError(f"--config {path} is a folder; pass a YAML file (e.g. configs/demo.yaml)")
    if not config_path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (a binary file?); pass a YAML file") from None
    except yaml.YAMLError as error:
        first_line = str(error).splitlines()[0] if str(error) else "parse error"
        raise ConfigError(f"config file {path} is not valid YAML ({first_line}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of flag names to values")
    values = {normalise_key(key): value for key, value in raw.items()}
    unknown = [key for key in values if key not in FIELD_NAMES]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"unknown key {key!r} in {path}{closest_key_hint(key, FIELD_NAMES)}")
    return values


def build_config(yaml_values: Mapping[str, Any], flag_values: Mapping[str, Any],
                 base_values: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Merge dataclass defaults <- ``base_values`` (a resumed run's config) <- YAML <- explicitly
    given flags, then validate. Unknown keys of ``base_values`` (other versions) are ignored."""
    merged: Dict[str, Any] = {key: value for key, value in (base_values or {}).items()
                              if key in FIELD_NAMES and key not in PER_INVOCATION_KEYS}
    merged.update(yaml_values)
    merged.update({key: value for key, value in flag_values.items() if value is not None})
    unknown = [key for key in merged if key not in FIELD_NAMES]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}{closest_key_hint(unknown[0], FIELD_NAMES)}")
    config = TrainConfig(**{key: coerce_value(key, value) for key, value in merged.items()})
    validate(config)
    return config


def coerce_value(key: str, value: Any) -> Any:
    """Coerce YAML scalars to the field's type (YAML reads ``2.5e-4`` as a string)."""
    default = getattr(TrainConfig, key, None)
    if value is None:
        return None
    target = type(default) if default is not None else None
    annotations = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    hint = annotations[key]
    try:
        if target is bool or "bool" in hint:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                    raise ValueError(value)
                return lowered in ("true", "yes", "1", "on")
            return bool(value)
        if target is int or "int" in hint:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if target is float or "float" in hint:
            return float(value)
        return str(value) if not isinstance(value, str) else value
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf) from YAML's .inf
        flag = key.replace("_", "-")
        raise ConfigError(f"--{flag} got {value!r}, which is not a valid {hint.replace('Optional[', '').rstrip(']')}") from None


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
    if config.compile:
        from engine.compile import compile_unsupported_reason

        reason = compile_unsupported_reason()
        _require(reason is None, f"--compile: {reason}")
    _require(config.device in DEVICES, f"--device {config.device!r} is unknown; choose one of {', '.join(DEVICES)}")
    if config.time_limit is not None:
        _require(parse_duration(config.time_limit) > 0, f"--time-limit must be positive (got {config.time_limit})")
    _validate_monitors(config)
    from models.encoder import check_backbone_name

    try:
        check_backbone_name(config.backbone)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for name in ("cache_dir", "checkpoint_dir"):
        folder = getattr(config, name)
        _require(folder is None or not Path(folder).exists() or Path(folder).is_dir(),
                 f"--{name.replace('_', '-')} {folder} is a file, not a folder; choose another path")
    if config.pretrained_path is not None:
        _require(Path(config.pretrained_path).is_file(),
                 f"--pretrained-path {config.pretrained_path} is not a file; download the weights and point to them")


def _validate_monitors(config: TrainConfig) -> None:
    from engine.loss_normalizer import NORMALIZATION_MODES
    from engine.monitors.post_epoch import parse_epoch_selection

    _require(config.loss_normalization in NORMALIZATION_MODES,
             f"--loss-normalization {config.loss_normalization!r} is unknown; choose one of {', '.join(NORMALIZATION_MODES)}")
    try:
        parse_epoch_selection(config.eval_epochs)
    except ValueError as error:
        raise ConfigError(f"--eval-epochs: {error}") from None
    _require(not config.auto_adjust_lr or config.diagnosis_enabled,
             "--auto-adjust-lr needs post-epoch evaluation; drop --eval-epochs none")
