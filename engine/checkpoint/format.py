"""What a checkpoint holds, version by version, and the readers every command shares.

Format 3 (this version)::

    {"version": 3,
     "trainer": Trainer.state_dict(),   # model, optimizer, precision, guard, criterion, plan,
                                        # progress counters, and each callback's own state
                                        # (the EMA shadow lives in callbacks["weight_ema"])
     "rng": ..., "config": ..., "world_size": int, "model_signature": {...},
     "metrics": {...} (epoch saves), "best_weights": "base" | "ema"}

Format 2 kept everything at the top level (``model``, ``ema``, ``optimizer``, ``epoch``...) and the
plateau LR multiplier in the post-epoch callback; ``upgrade`` rewrites it as format 3 on load, so
users' existing checkpoints resume bitwise. Format 1 weights do not fit the current model. Format 3
files written before ``--auto-adjust-lr`` became a callback of its own keep the epoch of its last
halving in ``callbacks["post_epoch"]``; ``upgrade`` moves it to ``callbacks["plateau_lr"]``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch

FORMAT_VERSION = 3
# The settings that shape the weights: a checkpoint only fits a model built with the same ones.
SIGNATURE_KEYS = ("backbone", "num_experts", "top_k", "decoder_channels", "min_feature_stride",
                  "detail_channels")
EMA_CALLBACK = "weight_ema"
PLATEAU_CALLBACK = "plateau_lr"  # engine/callbacks/plateau_lr.py (--auto-adjust-lr)
# Settings added after runs could be saved, with the value those runs trained with: a stored
# config without one (an older checkpoint) keeps training and predicting as it did.
LEGACY_VALUES: Dict[str, Any] = {"decoder_lr_scale": 1.0, "freeze_encoder_bn": False}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line with the fix."""


def model_signature(config) -> Dict[str, Any]:
    return {key: getattr(config, key) for key in SIGNATURE_KEYS}


def signature_conflicts(signature: Mapping[str, Any], values: Mapping[str, Any]) -> List[str]:
    """The architecture settings on which ``values`` and a checkpoint's ``signature`` disagree."""
    return [key for key in SIGNATURE_KEYS if key in signature and key in values and signature[key] != values[key]]


def check_signature(payload: Dict[str, Any], config, source: str) -> None:
    """Refuse a checkpoint made for another architecture, naming the mismatching setting."""
    signature = payload.get("model_signature") or {}
    conflicts = signature_conflicts(signature, model_signature(config))
    if conflicts:
        key = conflicts[0]
        flag = key.replace("_", "-")
        raise CheckpointError(
            f"checkpoint {source} was made with --{flag} {signature[key]} but this run uses "
            f"--{flag} {getattr(config, key)}; pass --{flag} {signature[key]} or another checkpoint")


def check_model_format(payload: Dict[str, Any], path) -> None:
    """Refuse, in one line, a checkpoint whose weights were written for an earlier model layout."""
    version = payload.get("version", 1)
    if not isinstance(version, int) or version < 2:
        raise CheckpointError(
            f"checkpoint {path} has format {version}, written before the decoder moved to stride-4 features with "
            f"side outputs (format 2); its weights do not fit this version's model: train anew")


def upgrade(payload: Dict[str, Any]) -> Dict[str, Any]:
    """``payload`` in the current layout (format 2 is rewritten; format 1 is left for the refusal)."""
    if payload.get("version") == FORMAT_VERSION:
        return _plateau_state_apart(payload)
    if payload.get("version") != 2:
        return payload
    callbacks = dict(payload.get("callbacks") or {})
    if payload.get("ema") is not None:
        callbacks[EMA_CALLBACK] = dict(callbacks.get(EMA_CALLBACK) or {}, shadow=payload["ema"])
    plan = dict(payload.get("plan") or {})
    post_epoch = dict(callbacks.get("post_epoch") or {})
    multiplier, stage = float(post_epoch.pop("lr_multiplier", 1.0)), post_epoch.get("stage")
    if multiplier != 1.0 and stage is not None:
        plan["lr_scales"] = {str(stage): multiplier}
    if "post_epoch" in callbacks:
        callbacks["post_epoch"] = post_epoch
    trainer = {
        "model": payload["model"],
        "optimizer": payload.get("optimizer"),
        "precision": payload.get("scaler") or {},
        "guard": payload.get("nonfinite_guard") or {},
        "criterion": payload.get("criterion") or {},
        "plan": plan or None,
        "progress": {key: payload[key] for key in ("epoch", "global_step", "batch_in_epoch", "epoch_loss_sum",
                                                   "epoch_updates") if key in payload},
        "callbacks": callbacks,
    }
    upgraded = {key: payload[key] for key in ("rng", "config", "world_size", "model_signature", "metrics",
                                              "best_weights") if key in payload}
    return _plateau_state_apart(dict(upgraded, version=FORMAT_VERSION, trainer=trainer))


def _plateau_state_apart(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Until ``--auto-adjust-lr`` became its own callback, the post-epoch monitor kept the epoch of the
    last halving (``adjusted_at_epoch``); it moves to that callback's state (``payload`` itself when
    there is nothing to move)."""
    callbacks = trainer_state(payload).get("callbacks") or {}
    post_epoch = callbacks.get("post_epoch")
    if not isinstance(post_epoch, dict) or "adjusted_at_epoch" not in post_epoch:
        return payload
    post_epoch = dict(post_epoch)
    moved = {"adjusted_at_epoch": post_epoch.pop("adjusted_at_epoch")}
    callbacks = dict(callbacks, post_epoch=post_epoch, **{PLATEAU_CALLBACK: callbacks.get(PLATEAU_CALLBACK, moved)})
    return dict(payload, trainer=dict(trainer_state(payload), callbacks=callbacks))


def stored_config(payload: Dict[str, Any]) -> Dict[str, Any]:
    """The run config saved in ``payload``, with ``LEGACY_VALUES`` where the writing version had no such setting."""
    return {**LEGACY_VALUES, **(payload.get("config") or {})}


def trainer_state(payload: Dict[str, Any]) -> Dict[str, Any]:
    return payload.get("trainer") or {}


def progress(payload: Dict[str, Any]) -> Dict[str, Any]:
    """``epoch`` (completed), ``global_step``, ``batch_in_epoch``... of the run that wrote ``payload``."""
    return trainer_state(payload).get("progress") or {}


def saved_weights(payload: Dict[str, Any], which: str = "base") -> Optional[Dict[str, torch.Tensor]]:
    """The model state dict of ``which`` weights ("base" or "ema"); None when not saved."""
    state = trainer_state(payload)
    if which == "ema":
        return (state.get("callbacks", {}).get(EMA_CALLBACK) or {}).get("shadow")
    return state.get("model")


def has_ema(payload: Dict[str, Any]) -> bool:
    return saved_weights(payload, "ema") is not None
