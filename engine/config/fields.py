"""``TrainConfig``: every training setting with its default, and the typed sub-configs it hands out."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from engine.config.values import eval_epochs_disabled, parse_duration, parse_scales, training_sides
from models.config import ModelConfig, default_top_k

PRETRAINED_DECODER_LR_SCALE = 4.0  # decoder LR / encoder LR when the encoder is pretrained (README, real_data.py)
SCHEDULERS = ("cosine", "constant", "warmup-constant-cosine")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "off", "fp16", "bf16")
CACHE_MODES = ("none", "memory", "disk")  # data/cache.py's build_cache builds them (a test builds each)
PROGRESS_MODES = ("auto", "bar", "log", "off")
BEST_METRICS = ("iou", "sm", "mae", "wfm")  # sm / wfm: pysodmetrics at each validation mask's own size
NORMALIZATION_MODES = ("none", "ema")  # engine/training/loss_normalizer.py implements them


@dataclass
class TrainConfig:
    """Every setting of ``train_ultimate.py train``; field names equal the flag names."""

    # Data
    dataset_path: Optional[Union[str, List[str]]] = None  # one root, or a list trained on together
    include_noncam: bool = False
    skip_bad_samples: bool = False
    skip_unpaired: bool = False  # use only complete image/mask pairs (CAMO ships 2 lonely masks)
    val_fraction: float = 0.1
    img_size: int = 384
    train_scales: str = "1"  # multi-scale training: each batch at one of these x img_size (data/batch_scale.py)
    num_workers: Optional[int] = None  # None: the CPU cores / the ranks, at most 4 (engine.training.data_module)
    persistent_workers: bool = True  # workers live across epochs (the epoch travels with each index)
    cache: str = "none"  # none | memory | disk (data/cache.py)
    cache_dir: Optional[str] = None  # None: <checkpoint_dir>/resize-cache
    synthetic_train_size: int = 400
    synthetic_val_size: int = 100
    synthetic_difficulty: float = 0.15
    # Model (the architecture's defaults are ModelConfig's, written once in models/config.py)
    backbone: str = ModelConfig.backbone
    num_experts: int = ModelConfig.num_experts
    top_k: Optional[int] = None  # None: models.config.default_top_k(num_experts), resolved on construction
    decoder_channels: int = ModelConfig.decoder_channels
    router_noise: float = ModelConfig.router_noise
    pretrained: Optional[bool] = None  # None: on for real datasets, off for the synthetic set
    pretrained_path: Optional[str] = None
    moe_loss_weight: float = 0.01
    deep_supervision_weight: float = 0.0  # > 0: per-expert logits get their own structure loss
    side_supervision_weight: float = 0.5  # > 0: each pyramid level's side logits get a structure loss
    min_feature_stride: int = ModelConfig.min_feature_stride  # FPN and experts; the level below: detail head
    detail_channels: int = ModelConfig.detail_channels  # width of that detail refinement (0: off)
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
    continue_from: Optional[str] = None  # a previous session's (read-only) output: copy its history, then resume
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
    devices: str = "auto"  # auto: every visible GPU, one process each (engine/runtime/launch.py); or N
    amp: str = "auto"
    channels_last: bool = False
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model (engine/runtime/compile.py)
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
    def train_sides(self) -> Tuple[int, ...]:
        """Multi-scale training's batch sides: ``--train-scales`` x ``--img-size``, rounded, ascending."""
        return training_sides(self.img_size, parse_scales(self.train_scales))

    @property
    def dataset_roots(self) -> List[str]:
        """``--dataset-path`` as a list of roots (empty: the synthetic set)."""
        if self.dataset_path is None:
            return []
        return [self.dataset_path] if isinstance(self.dataset_path, str) else list(self.dataset_path)

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
PER_INVOCATION_KEYS = ("resume_from", "continue_from", "stop_after_epochs", "time_limit", "restart_schedule", "restart_epoch",
                       "overwrite", "devices")
# Settings that shape the LR plan: changing any of them on resume re-plans the schedule.
SCHEDULE_KEYS = (
    "epochs", "stage1_epochs", "skip_stage1", "lr", "stage2_lr", "backbone_lr_scale", "decoder_lr_scale", "scheduler",
    "min_lr", "warmup_epochs", "batch_size", "stage2_batch_size", "accumulation_steps",
)

