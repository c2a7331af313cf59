"""Merging YAML values and flags over the defaults into a validated ``TrainConfig``."""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import yaml

from engine.config.checks import validate
from engine.config.fields import FIELD_NAMES, PER_INVOCATION_KEYS, TrainConfig
from engine.config.values import ConfigError


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


def _dataset_roots(value: Any):
    """One root as a string; several as a list of strings (YAML list or repeated on the command line)."""
    roots = [value] if isinstance(value, str) else value
    if not isinstance(roots, (list, tuple)) or not roots or not all(isinstance(root, str) and root for root in roots):
        raise ConfigError(f"--dataset-path got {value!r}; give one folder or a list of folders")
    return roots[0] if len(roots) == 1 else list(roots)


def coerce_value(key: str, value: Any) -> Any:
    """Coerce YAML scalars to the field's type (YAML reads ``2.5e-4`` as a string)."""
    default = getattr(TrainConfig, key, None)
    if value is None:
        return None
    target = type(default) if default is not None else None
    annotations = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    hint = annotations[key]
    if key == "dataset_path":
        return _dataset_roots(value)
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

