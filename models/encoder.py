"""timm encoder with ``features_only=True``: multi-scale features, normalisation and stage groups."""
from __future__ import annotations

import contextlib
import difflib
import logging
from typing import Dict, List, Optional, Tuple

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from models.checkpointing import check_non_reentrant_checkpointing, non_reentrant_checkpointing
from models.errors import PretrainedWeightsError, UnknownBackboneError
from models.half_layer_norm import keep_layer_norms_half
from models.weights import load_weights_into

logger = logging.getLogger(__name__)


class _DirectParameters(nn.Module):
    """Holds references to a container's own parameters (e.g. a ViT ``pos_embed``) so they can
    sit in a stage group without the container's children. Never registered as a submodule,
    so the encoder's ``parameters()`` still lists each tensor once."""

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        for name, param in owner.named_parameters(recurse=False):
            self.register_parameter(name, param)


def check_backbone_name(name: str) -> None:
    """Raise ``UnknownBackboneError`` with close matches when ``name`` is not a timm model."""
    if ":" in name or timm.is_model(name):  # ``hf-hub:org/repo`` names are resolved by timm
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}? " if close else ""
    raise UnknownBackboneError(
        f"unknown backbone '{name}'; {hint}check timm.list_models() for valid names"
    )


def _create_pretrained(name: str) -> nn.Module:
    try:
        return timm.create_model(name, features_only=True, pretrained=True)
    except Exception as err:  # offline: OSError, httpx/requests errors, hub errors, ...
        detail = (str(err).strip().splitlines() or [""])[0][:120]
        raise PretrainedWeightsError(
            f"could not download pretrained weights for '{name}' ({type(err).__name__}: {detail}); "
            f"for offline use pass --pretrained-path FILE, or train from scratch with --no-pretrained"
        ) from err


class TimmEncoder(nn.Module):
    """Wraps ``timm.create_model(name, features_only=True)`` and returns every feature level.

    Attributes:
        backbone_name: the timm model name.
        model: the timm ``features_only`` model.
        out_channels: channels of each feature level, shallow -> deep (every level timm exposes;
            the decoder picks the ones it uses).
        reductions: stride of each feature level w.r.t. the input, shallow -> deep.
        grad_checkpointing: timm's gradient checkpointing is on (``set_grad_checkpointing``).
    """

    def __init__(self, name: str, pretrained: bool = False, pretrained_path: Optional[str] = None) -> None:
        """Create the encoder.

        Args:
            name: timm model name (e.g. ``edgenext_base``).
            pretrained: download timm's pretrained weights (ignored when ``pretrained_path`` is set).
            pretrained_path: local weights file (``.pth``/``.bin``/``.safetensors``) for offline use.

        Raises:
            UnknownBackboneError: ``name`` is not a timm model.
            PretrainedWeightsError: the weights cannot be downloaded or read.
        """
        super().__init__()
        check_backbone_name(name)
        self.backbone_name = name
        if pretrained_path:
            self.model = timm.create_model(name, features_only=True, pretrained=False)
            load_weights_into(self.model, pretrained_path, name)
        elif pretrained:
            self.model = _create_pretrained(name)
        else:
            self.model = timm.create_model(name, features_only=True, pretrained=False)
        # LayerNorms in half precision under CUDA autocast, as the decoder's GroupNorm (models/half_layer_norm.py)
        keep_layer_norms_half(self.model)
        # A few timm families (MambaOut, ...) hand out their features channels-last, (B, H, W, C).
        self.features_nhwc = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")
        self.out_channels: List[int] = list(self.model.feature_info.channels())
        self.reductions: List[int] = list(self.model.feature_info.reduction())
        self.grad_checkpointing = False
        logger.debug("Encoder %s: channels %s, strides %s", name, self.out_channels, self.reductions)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn timm's gradient checkpointing on or off; it always runs non-reentrant
        (``models.checkpointing``), so stages behind frozen ones still get their gradients.

        Raises:
            GradCheckpointingError: this timm cannot be made to checkpoint non-reentrantly.
        """
        if not hasattr(self.model, "set_grad_checkpointing"):
            if enable:
                logger.warning("%s has no gradient checkpointing in timm: its encoder runs without",
                               self.backbone_name)
            return
        if enable:
            check_non_reentrant_checkpointing()
        self.model.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    @property
    def normalization(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """``(mean, std)`` of the input normalisation from timm's pretrained config."""
        data_config = resolve_model_data_config(self.model)
        return tuple(data_config["mean"]), tuple(data_config["std"])

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Extract features.

        Args:
            images: normalised images ``(B, 3, H, W)``.

        Returns:
            One map per level, ``(B, out_channels[i], ~H / reductions[i], ~W / reductions[i])``.
        """
        with non_reentrant_checkpointing() if self.grad_checkpointing else contextlib.nullcontext():
            features = list(self.model(images))
        if self.features_nhwc:  # a view in channels-last memory: no copy
            features = [feature.permute(0, 3, 1, 2) for feature in features]
        return features

    def stages(self) -> List[List[nn.Module]]:
        """Partition every encoder parameter into one group per feature level, shallow -> deep.

        Modules run before the first feature level (the stem) join the first group; modules after
        the last one join the last group. Used for progressive deepest-first unfreezing:
        ``for module in encoder.stages()[-1]: module.requires_grad_(True)``.

        Returns:
            ``len(out_channels)`` lists of modules whose parameters are disjoint and cover the encoder.
        """
        feature_names = self.feature_module_names()
        groups: List[List[nn.Module]] = [[] for _ in feature_names]
        level = self._assign(self.model, "", feature_names, groups, 0)
        if level < len(feature_names):
            raise RuntimeError(f"could not locate the feature modules of '{self.backbone_name}' for stages()")
        return groups

    def feature_modules(self) -> List[Tuple[str, nn.Module]]:
        """``(name, module)`` of the module ending each feature level, shallow -> deep."""
        modules = dict(self.model.named_modules())
        return [(name, modules[name]) for name in self.feature_module_names()]

    def feature_module_names(self) -> List[str]:
        """Names (in ``self.model.named_modules()``) of the module ending each feature level."""
        modules: Dict[str, nn.Module] = dict(self.model.named_modules())
        names = []
        for timm_name in self.model.feature_info.module_name():
            # FeatureListNet flattens the first level (``stages.0`` -> ``stages_0``);
            # FeatureGetterNet nests the original model under ``model.``.
            candidates = (timm_name, timm_name.replace(".", "_", 1), f"model.{timm_name}")
            found = next((c for c in candidates if c in modules), None)
            if found is None:
                raise RuntimeError(f"feature module '{timm_name}' of '{self.backbone_name}' not found for stages()")
            names.append(found)
        return names

    def _assign(
        self, module: nn.Module, prefix: str, feature_names: List[str], groups: List[List[nn.Module]], level: int
    ) -> int:
        """Walk children in registration (= execution) order; return the level after the walk."""
        if any(True for _ in module.parameters(recurse=False)):
            groups[min(level, len(groups) - 1)].append(_DirectParameters(module))
        for child_name, child in module.named_children():
            full_name = f"{prefix}{child_name}"
            if full_name in feature_names:
                groups[min(level, len(groups) - 1)].append(child)
                level += 1
            elif any(name.startswith(full_name + ".") for name in feature_names):
                level = self._assign(child, full_name + ".", feature_names, groups, level)
            else:
                groups[min(level, len(groups) - 1)].append(child)
        return level
