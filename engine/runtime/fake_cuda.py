"""Fake CUDA: run a model's forward pass and loss under CUDA's real autocast policy without a GPU.

CUDA autocast does not follow CPU autocast: it runs ``linear``/``conv`` in fp16/bf16 and returns
fp32 from ``softmax``, ``sum``, ``binary_cross_entropy_with_logits``, ``group_norm`` and others,
where CPU autocast leaves many of them in the input's dtype. A dtype clash that only CUDA's policy
produces (e.g. ``scatter`` of an fp32 source into an fp16 tensor) therefore never shows on a CPU.

The technique, which needs no GPU and no CUDA driver:

1. Build the model for real on the CPU, then give a copy fake ``cuda`` parameters and buffers
   (``torch._subclasses.fake_tensor.FakeTensorMode``): fake tensors carry shape, dtype, device
   and strides but no data, and every op runs its meta kernel, which also checks dtypes.
2. Switch CUDA autocast on at the dispatcher level (``torch.set_autocast_enabled("cuda", True)``
   and friends). ``torch.autocast("cuda")`` itself refuses to turn on without a GPU, but the
   dispatcher applies CUDA's cast policy to any tensor on a ``cuda`` device, fake ones included.
3. Run the forward pass and the loss inside the fake mode with fake ``cuda`` inputs.

Limits: only shapes and dtypes propagate, so nothing that needs a value can run: ``.item()``,
``.tolist()``, ``float(t)``, ``bool(t)``, data-dependent shapes (``nonzero``, boolean indexing)
raise ``DataDependentOutputException`` and friends; the forward pass and the loss have none. The
backward pass cannot run either (the autograd engine asks the CUDA driver for a device context).
Because no arithmetic happens, even ``edgenext_base`` at 384 px and batch 8 takes seconds.

Usage::

    with FakeCuda() as cuda:
        model = cuda.module(build_model(config))
        images, masks = cuda.images(8, 384), cuda.masks(8, 384)
        with cuda_autocast(torch.float16):
            losses = criterion(model(images), masks)
"""
from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, Optional

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

FAKE_DEVICE = torch.device("cuda")
AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype = torch.float16) -> Iterator[None]:
    """CUDA autocast at ``dtype`` for the enclosed ops, also on a machine without a GPU.

    Sets what ``torch.autocast("cuda", dtype)`` sets, at the level below its Python checks; the
    previous enabled flag and dtype come back (and the cast cache is dropped) even on an error.

    Args:
        dtype: ``torch.float16`` or ``torch.bfloat16``.
    """
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"CUDA autocast runs in {AUTOCAST_DTYPES}, not {dtype}")
    was_enabled = torch.is_autocast_enabled("cuda")
    previous_dtype = torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        # Same exit as torch.autocast: the cache of cast weights only lives inside the outermost block.
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", was_enabled)
        torch.set_autocast_dtype("cuda", previous_dtype)


class FakeCuda:
    """A fake-tensor session in which ``cuda`` tensors exist without a GPU.

    Enter it (``with FakeCuda() as cuda:``) around everything that touches fake tensors: the
    model's own factory calls (``torch.zeros(..., device=x.device)``, ``randn_like``) must run
    inside the mode to make fake tensors instead of asking the CUDA driver. Real CPU tensors that
    meet fake ones are converted (``allow_non_fake_inputs``), as a real CPU tensor would be copied
    to the GPU; a real non-scalar CPU tensor mixed into a CUDA op fails here as it would on a GPU.

    Attributes:
        mode: the ``FakeTensorMode`` every fake tensor of this session belongs to.
    """

    def __init__(self) -> None:
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)

    def __enter__(self) -> "FakeCuda":
        self.mode.__enter__()
        return self

    def __exit__(self, *error) -> Optional[bool]:
        return self.mode.__exit__(*error)

    def tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """A fake ``cuda`` tensor with the shape, dtype and ``requires_grad`` of a real one (no data)."""
        with self.mode:
            fake = self.mode.from_tensor(tensor.detach()).to(FAKE_DEVICE)
        return fake.requires_grad_(tensor.requires_grad) if tensor.is_floating_point() else fake

    def module(self, module: nn.Module) -> nn.Module:
        """A copy of ``module`` whose parameters and buffers are fake ``cuda`` tensors.

        What ``module.to("cuda")`` would move is converted (parameters and buffers, shared ones
        stay shared, frozen ones stay frozen); ``module`` itself is left untouched, and its
        weights are not copied (the copy gets fake tensors in their place).

        Args:
            module: a real module on the CPU, e.g. from ``build_model``.

        Returns:
            The copy, in the same train/eval mode as ``module``.
        """
        fakes: Dict[int, torch.Tensor] = {}
        for parameter in module.parameters():
            fakes[id(parameter)] = nn.Parameter(self.tensor(parameter), requires_grad=parameter.requires_grad)
        for buffer in module.buffers():
            fakes[id(buffer)] = self.tensor(buffer)
        # deepcopy consults its memo first: every parameter and buffer maps to its fake stand-in.
        return copy.deepcopy(module, memo=dict(fakes))

    def empty(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A fake ``cuda`` tensor of ``shape`` and ``dtype`` (its values are not defined)."""
        with self.mode:
            return torch.empty(shape, dtype=dtype, device=FAKE_DEVICE)

    def images(self, batch_size: int, img_size: int, channels_last: bool = False) -> torch.Tensor:
        """A fake normalised image batch ``(B, 3, S, S)`` float32 on ``cuda``."""
        images = self.empty(batch_size, 3, img_size, img_size)
        if channels_last:
            with self.mode:
                images = images.contiguous(memory_format=torch.channels_last)
        return images

    def masks(self, batch_size: int, img_size: int) -> torch.Tensor:
        """A fake ground-truth batch ``(B, 1, S, S)`` float32 on ``cuda``, as the data module gives it."""
        return self.empty(batch_size, 1, img_size, img_size)

    def batch(self, batch_size: int, img_size: int) -> Dict[str, torch.Tensor]:
        """A fake training/validation batch: ``{"image": (B, 3, S, S), "mask": (B, 1, S, S)}``."""
        return {"image": self.images(batch_size, img_size), "mask": self.masks(batch_size, img_size)}
