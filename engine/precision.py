"""Mixed precision: ``--amp auto | off | fp16 | bf16`` -> autocast dtype and an optional GradScaler.

``auto`` picks bf16 on GPUs that support it (Ampere and newer), fp16 + GradScaler on older GPUs
(P100, T4), and full precision on the CPU.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


def resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``mode`` on ``device`` (None: full precision)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if mode == "fp16" else torch.bfloat16


@dataclass
class Precision:
    """Autocast context, scaled backward and unscale-then-clip in one place."""

    device: torch.device
    dtype: Optional[torch.dtype]
    scaler: Optional[torch.amp.GradScaler]

    @classmethod
    def create(cls, mode: str, device: torch.device) -> "Precision":
        dtype = resolve_amp(mode, device)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(device, dtype, scaler)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_and_clip(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                         max_norm: float) -> Optional[torch.Tensor]:
        """Unscale gradients (fp16) and clip; returns the pre-clip total norm as a device tensor.

        A non-finite norm is not an error here: under fp16 the GradScaler skips that step.
        """
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        parameters = [p for p in model.parameters() if p.grad is not None]
        if not parameters:
            return None
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
