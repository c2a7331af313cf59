"""Ship a trained model: one weight set as safetensors, or a logits-only graph for ONNX / ``torch.export``.

A ``.pth`` checkpoint carries the model, the EMA shadow, the AdamW moments and the run state
(about 4x the weights). An export keeps what inference needs:

- ``safetensors``: the chosen weights (optionally fp16) plus, as string metadata, the model config,
  its signature, the inference side and the backbone normalisation: enough to rebuild the model
  offline (no pretrained download) with ``engine.api.load_model`` (read by
  ``engine.commands.export_reader``).
- ``onnx`` / ``pt2`` (``torch.export``): :class:`LogitsOnly`, a wrapper taking RGB in [0, 1] at any
  ``H x W`` and returning logits at that size. It resizes to the training side inside the graph,
  because the segmenter's own forward specialises on its input size when traced by ``torch.export``
  (shape-dependent branches in the decoder), while a fixed inner side keeps H and W dynamic outside.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from engine import __version__
from engine.checkpoint import CheckpointError
from engine.checkpoint.format import model_signature
from engine.commands.export_reader import WEIGHTS_FORMAT, read_metadata
from engine.config import ConfigError
from models import ModelConfig

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("safetensors", "onnx", "pt2")


class LogitsOnly(nn.Module):
    """Deployable forward: RGB images in [0, 1] at any size -> mask logits at the same size.

    Args:
        model: segmenter returning ``SegmentationOutput`` (``.logits``); kept in eval mode.
        img_size: side the images are resized to inside the graph (the training ``--img-size``).
        normalization: ``(mean, std)`` of the backbone in 0-1 units.
    """

    def __init__(self, model: nn.Module, img_size: int, normalization: Tuple[Sequence[float], Sequence[float]]):
        super().__init__()
        self.model, self.img_size = model.eval(), int(img_size)
        mean, std = normalization
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float RGB in [0, 1] -> ``(B, 1, H, W)`` logits (sigmoid gives probabilities)."""
        size = images.shape[-2:]
        normalised = (images - self.mean) / self.std
        inner = F.interpolate(normalised, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        logits = self.model(inner).logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def check_output(output: Path, sources: Sequence[Path], overwrite: bool) -> Path:
    """Refuse an export path that is one of the files read, or an existing file without ``overwrite``."""
    output = Path(output)
    for source in sources:
        if Path(source).exists() and output.exists() and os.path.samefile(output, source):
            raise ConfigError(f"--output {output} is the checkpoint being exported; choose another file")
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; pass a file name such as {output / 'model.safetensors'}")
    if output.exists() and not overwrite:
        raise ConfigError(f"--output {output} already exists; choose another file or pass --overwrite")
    if output.exists() and not is_export(output):
        raise ConfigError(f"--output {output} exists and is not an export (--overwrite replaces only a file that "
                          "export wrote, never a training checkpoint or another file); choose another file")
    return output


def is_export(path: Path) -> bool:
    """Whether ``path`` is a file ``export`` writes: a safetensors file with our metadata, a
    ``torch.export`` archive, or an ONNX graph (recognised only where the ``onnx`` package is)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        read_metadata(path)
        return True
    except CheckpointError:
        pass
    if zipfile.is_zipfile(path):  # a .pt2 archive, or a torch.save checkpoint (also a zip)
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.rsplit("/", 1)[-1] == "archive_format" and archive.read(name).strip() == b"pt2"
                           for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    try:
        from google.protobuf.message import DecodeError
        from onnx import ModelProto
    except ImportError:
        return False
    try:  # as protobuf whatever the suffix (onnx.load_model reads a .json name as JSON)
        graph = ModelProto.FromString(path.read_bytes()).graph
    except (DecodeError, OSError):
        return False
    return len(graph.node) > 0  # protobuf parses some foreign bytes (an empty file included) as an empty model


def write_atomically(output: Path, write: Callable[[Path], None]) -> None:
    """``write(temp path)`` in the output's folder, then ``os.replace``: a failed export leaves no partial file."""
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=".tmp-export-", suffix=output.suffix, dir=output.parent)
    except OSError as error:
        raise ConfigError(f"cannot write {output} ({error.strerror}); pass a writable --output path") from None
    os.close(handle)
    try:
        write(Path(temp_name))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)  # mkstemp creates 0600; an export is meant to be shared
        os.replace(temp_name, output)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def weights_metadata(model_config: ModelConfig, img_size: int, normalization, weights: str, dtype: str,
                     source: str) -> Dict[str, str]:
    """safetensors metadata (strings only) that rebuilds the model without the checkpoint."""
    offline = dataclasses.replace(model_config, pretrained=False, pretrained_path=None)
    return {
        "format": WEIGHTS_FORMAT, "project_version": __version__, "source": source, "weights": weights,
        "dtype": dtype, "img_size": str(int(img_size)),
        "model_config": json.dumps(dataclasses.asdict(offline), sort_keys=True),
        "model_signature": json.dumps(model_signature(offline), sort_keys=True),
        "normalization": json.dumps([list(normalization[0]), list(normalization[1])]),
    }


def save_safetensors(model: nn.Module, model_config: ModelConfig, img_size: int, normalization, weights: str,
                     output: Path, half: bool = False, source: str = "") -> None:
    """Write ``model``'s state dict (floating tensors as fp16 with ``half``) and its metadata."""
    from safetensors.torch import save_file

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().cpu()
        return (tensor.half() if half and tensor.is_floating_point() else tensor).contiguous().clone()

    state = {name: stored(tensor) for name, tensor in model.state_dict().items()}
    metadata = weights_metadata(model_config, img_size, normalization, weights, "float16" if half else "float32",
                                source)
    write_atomically(output, lambda path: save_file(state, str(path), metadata=metadata))


def dynamic_dims(max_side: int = 8192) -> Dict[str, Dict[int, Any]]:
    """``torch.export`` dynamic shapes of :class:`LogitsOnly`'s input: batch, height and width."""
    dim = torch.export.Dim
    return {"images": {0: dim("batch", min=1, max=1024), 2: dim("height", min=8, max=max_side),
                       3: dim("width", min=8, max=max_side)}}


def export_program(wrapper: LogitsOnly, example_size: Tuple[int, int] = (2, 64)) -> "torch.export.ExportedProgram":
    """``torch.export`` of the wrapper with dynamic batch, H and W (``example_size`` = (batch, side)).

    The example must not be 1 in the batch or the spatial sides: ``torch.export`` treats a size of 1
    as a constant.
    """
    batch, side = example_size
    example = torch.rand(batch, 3, side, side + 8, device=wrapper.mean.device)
    return torch.export.export(wrapper.eval(), (example,), dynamic_shapes=dynamic_dims())


def save_program(wrapper: LogitsOnly, output: Path) -> None:
    """Write the ``torch.export`` program as a ``.pt2`` file (``torch.export.load(path).module()``)."""
    program = export_program(wrapper)
    write_atomically(output, lambda path: torch.export.save(program, str(path)))


def save_onnx(wrapper: LogitsOnly, output: Path, opset: int = 18) -> None:
    """Write the wrapper as ONNX (input ``images`` (B, 3, H, W), output ``logits`` (B, 1, H, W), all dynamic).

    Raises:
        ConfigError: the ``onnx`` / ``onnxscript`` packages (torch's ONNX exporter) are missing, or
            the model holds the frequency expert, whose complex FFT filter torch's ONNX exporter
            cannot convert (it failed after ~15 s with a traceback).
    """
    from models.experts import FrequencyExpert

    if any(isinstance(module, FrequencyExpert) for module in wrapper.modules()):
        raise ConfigError("--format onnx cannot express the frequency expert's FFT filter (every model with "
                          "--num-experts >= 4 has one); export with --format pt2 or --format safetensors")
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise ConfigError(f"--format onnx needs the {package} package: pip install onnx onnxscript") from None
    example = torch.rand(2, 3, 64, 72, device=wrapper.mean.device)

    def write(path: Path) -> None:
        program = torch.onnx.export(wrapper.eval(), (example,), dynamo=True, input_names=["images"],
                                    output_names=["logits"], dynamic_shapes=dynamic_dims(), opset_version=opset,
                                    external_data=False, verbose=False)
        program.save(str(path))

    write_atomically(output, write)


def export_model(model, output: Path, export_format: str, half: bool = False) -> Path:
    """Write an ``engine.api.CamoModel`` in ``export_format`` (``safetensors`` | ``onnx`` | ``pt2``).

    The caller checks ``output`` first (:func:`check_output`). ``half`` (safetensors only) stores
    floating tensors as fp16, half the size.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export_format must be one of {EXPORT_FORMATS}, got {export_format!r}")
    if half and export_format != "safetensors":
        raise ConfigError("--half applies to --format safetensors only (ONNX and pt2 graphs are float32)")
    if export_format == "safetensors":
        save_safetensors(model.module, model.model_config, model.img_size, model.normalization, model.weights,
                         output, half, source=model.source.name)
    else:
        wrapper = LogitsOnly(model.module, model.img_size, model.normalization).cpu().eval()
        (save_onnx if export_format == "onnx" else save_program)(wrapper, output)
    logger.info("Wrote %s (%s, %s weights, %.1f MB)", output, export_format, model.weights,
                Path(output).stat().st_size / 1e6)
    return Path(output)
