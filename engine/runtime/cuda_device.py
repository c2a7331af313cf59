"""Start-up checks of a CUDA GPU against the installed PyTorch build, and the AMP dtype it gets.

Everything here uses only ``torch.cuda``'s queries (availability, capability, arch list, name), never
a CUDA operation, so the checks answer before the first kernel and a test can describe any card by
patching those queries.

Why: Kaggle's default image ships a CUDA 12.8 PyTorch without Pascal (sm_60) kernels, so on a P100
``torch.cuda.is_available()`` is True and the first kernel fails with "no kernel image is
available"; and ``torch.cuda.is_bf16_supported()`` counts *emulated* bf16, so it is True on a T4
(compute 7.5), which has neither bf16 tensor cores nor bf16 convolutions in cuDNN.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

import torch

from engine.config import ConfigError
from engine.runtime.compile import compile_unsupported_reason

Capability = Tuple[int, int]

BF16_MIN_CAPABILITY: Capability = (8, 0)  # Ampere: bf16 tensor cores and cuDNN bf16 convolutions
COMPILE_MIN_CAPABILITY: Capability = (7, 0)  # Triton, which torch.compile's GPU code uses
SUPPORTED_CARDS = "a T4 or an L4 (on Kaggle: Settings -> Accelerator -> GPU T4 x2)"

_ARCH = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")


def _parse_arch(name: str) -> Optional[Tuple[str, Capability, str]]:
    """``sm_86`` -> ``("sm", (8, 6), "")``; ``compute_90a`` -> ``("compute", (9, 0), "a")``."""
    match = _ARCH.match(name)
    if match is None:
        return None
    kind, digits, suffix = match.groups()
    return kind, (int(digits[:-1]), int(digits[-1])), suffix


def arch_list_supports(capability: Capability, arch_list: Sequence[str]) -> bool:
    """Whether a build compiled for ``arch_list`` has kernels for a GPU of ``capability``.

    CUDA's compatibility rule: a ``sm_XY`` binary runs on compute capability ``X.Z`` for ``Z >= Y``
    (same major version); ``compute_XY`` PTX is compiled at load time for any GPU of capability
    ``>= X.Y``. Architecture-specific targets (``sm_90a``) run only on exactly that capability,
    family targets (``sm_100f``) like ``sm_XY``.
    """
    for name in arch_list:
        parsed = _parse_arch(name)
        if parsed is None:
            continue
        kind, built, suffix = parsed
        if suffix == "a":
            if capability == built:
                return True
        elif kind == "sm" and capability[0] == built[0] and capability[1] >= built[1]:
            return True
        elif kind == "compute" and capability >= built:
            return True
    return False


def cuda_capability(device: torch.device) -> Capability:
    """The compute capability of ``device`` (a query: no CUDA work)."""
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp mode`` on ``device`` (None: full precision).

    ``auto``: fp16 (with a GradScaler) below compute 8.0, bf16 from 8.0, fp32 on the CPU.

    Raises:
        ConfigError: ``--amp bf16`` on a CUDA GPU below compute 8.0.
    """
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        return torch.float16 if mode == "fp16" else torch.bfloat16
    capability = cuda_capability(device)
    has_bf16 = capability >= BF16_MIN_CAPABILITY
    if mode == "auto":
        return torch.bfloat16 if has_bf16 else torch.float16
    if mode == "bf16" and not has_bf16:
        raise ConfigError(f"--amp bf16: the {_card(device, capability)} has no bf16 tensor cores or cuDNN bf16 "
                          "convolutions (compute 8.0+ needed); use --amp fp16 (or auto, which picks it)")
    return torch.float16 if mode == "fp16" else torch.bfloat16


def check_cuda_device(device: torch.device, amp: str = "off", compile: bool = False) -> None:
    """Refuse a GPU this PyTorch cannot run, and settings the GPU cannot run, in one line each.

    Does nothing for a CPU device.

    Raises:
        ConfigError: no kernels of this build fit the GPU; ``--amp bf16`` below compute 8.0;
            ``--compile`` below compute 7.0.
    """
    if device.type != "cuda":
        return
    capability = cuda_capability(device)
    arch_list = list(torch.cuda.get_arch_list())
    if arch_list and not arch_list_supports(capability, arch_list):
        raise ConfigError(
            f"the {_card(device, capability)} cannot run this PyTorch build (torch {torch.__version__} has kernels "
            f"for {' '.join(arch_list)}); pick {SUPPORTED_CARDS}, or install a PyTorch build for "
            f"sm_{capability[0]}{capability[1]}")
    amp_dtype(amp, device)
    if compile and capability < COMPILE_MIN_CAPABILITY:
        raise ConfigError(f"--compile: the {_card(device, capability)} is below compute 7.0, the minimum of "
                          "Triton (torch.compile's GPU code generator); drop --compile")


def _card(device: torch.device, capability: Capability) -> str:
    return f"GPU {torch.cuda.get_device_name(device)} (compute {capability[0]}.{capability[1]})"


def select_device(name: str, amp: str = "off", compile: bool = False) -> torch.device:
    """The device ``--device name`` means here, refused in one line when this PyTorch cannot run it
    (or cannot run ``--amp`` / ``--compile`` on it) before any CUDA work."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if compile:
        reason = compile_unsupported_reason()
        if reason is not None:
            raise ConfigError(f"--compile: {reason}")
    device = torch.device(name)
    check_cuda_device(device, amp, compile)
    return device
