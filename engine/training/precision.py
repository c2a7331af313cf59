"""Mixed precision: ``--amp auto | off | fp16 | bf16`` -> autocast dtype and an optional GradScaler.

``auto`` picks bf16 from compute 8.0 (Ampere and newer), fp16 + GradScaler below it (T4), and full
precision on the CPU (``engine.runtime.cuda_device.amp_dtype``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from engine.runtime.cuda_device import amp_dtype


resolve_amp = amp_dtype  # the autocast dtype of ``--amp mode`` on a device (None: full precision)


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

    def step(self, optimizer: torch.optim.Optimizer, apply: bool = True) -> None:
        """One optimizer update; ``apply=False`` skips it (non-finite loss or gradients).

        The GradScaler still sees every step: its ``update`` lowers the scale after an overflow
        (recorded by ``unscale_``). Its own ``step`` would apply an update whose loss was non-finite
        as long as the gradients were finite, so the weights are only touched when ``apply``.
        """
        if apply and self.scaler is not None:
            self.scaler.step(optimizer)
        elif apply:
            optimizer.step()
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
