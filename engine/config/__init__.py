"""Typed training configuration: YAML/flag values -> ``TrainConfig`` -> validated settings.

Configuration flows one way: ``train_ultimate.py`` parses flags, ``loading`` merges them over the
YAML file and the dataclass defaults (``fields``), ``checks`` validates the result. This package is
the bottom of ``engine``: it imports only ``models``, the standard library and YAML.
"""
from engine.config.checks import NUMBER_RANGES, Range, check_number, validate
from engine.config.fields import (AMP_MODES, BEST_METRICS, CACHE_MODES, DEVICES, FIELD_NAMES, NORMALIZATION_MODES,
                                  PER_INVOCATION_KEYS, PRETRAINED_DECODER_LR_SCALE, PROGRESS_MODES, SCHEDULE_KEYS,
                                  SCHEDULERS, TrainConfig)
from engine.config.loading import build_config, closest_key_hint, coerce_value, load_yaml, normalise_key
from engine.config.values import (EVAL_EPOCHS_OFF, ConfigError, eval_epochs_disabled, parse_duration,
                                  parse_epoch_selection, parse_scales)

__all__ = [
    "AMP_MODES", "BEST_METRICS", "CACHE_MODES", "DEVICES", "EVAL_EPOCHS_OFF", "FIELD_NAMES", "NORMALIZATION_MODES",
    "NUMBER_RANGES", "PER_INVOCATION_KEYS", "PRETRAINED_DECODER_LR_SCALE", "PROGRESS_MODES", "SCHEDULE_KEYS",
    "SCHEDULERS", "ConfigError", "Range", "TrainConfig", "build_config", "check_number", "closest_key_hint",
    "coerce_value", "eval_epochs_disabled", "load_yaml", "normalise_key", "parse_duration", "parse_epoch_selection",
    "parse_scales", "validate",
]
