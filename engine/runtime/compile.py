"""``--compile``: torch.compile the model in place, and the eager escape hatch its monitors need.

The model is compiled with ``nn.Module.compile()``, so it stays the same object: parameter names,
checkpoints, the weight EMA and DDP wrapping are unchanged. Two things need care:

* Recompiles. Freezing/unfreezing changes ``requires_grad`` and train/eval flags, validation runs
  without grad and the last batch of an epoch is smaller; each is a new graph. A progressive
  two-stage run can need more than Dynamo's default of 8 per function, after which it would
  silently run eagerly, so the limit is raised.
* Module hooks. Dynamo does not watch hooks added after compilation (they would be skipped), so
  the gradient-drift monitor runs its measured updates under :func:`eager_while_measuring`.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Graphs per compiled function: stages x {train, validation} x {full, last partial batch} fits.
RECOMPILE_LIMIT = 64


def compile_unsupported_reason() -> Optional[str]:
    """Why ``--compile`` cannot work with the installed torch (None when it can)."""
    if not hasattr(torch, "compiler") or not hasattr(torch.compiler, "set_stance"):
        return (f"needs torch >= 2.6 (installed: {torch.__version__}); upgrade torch or drop --compile")
    return None


def compile_model(model: nn.Module) -> nn.Module:
    """Compile ``model`` in place (lazily: the first forward of each new graph compiles it).

    Returns:
        The same module, whose calls now go through ``torch.compile``.
    """
    dynamo_config = torch._dynamo.config  # no public setter for the recompile limit
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, RECOMPILE_LIMIT)
    model.compile()
    logger.info("torch.compile: the first step of each stage and the first validation compile (slow), "
                "later steps reuse the graphs")
    return model


def eager_while_measuring() -> contextlib.AbstractContextManager:
    """A context manager under which compiled modules run eagerly, so module hooks fire.

    Entering sets the stance at once and leaving restores the previous one; without
    ``torch.compiler.set_stance`` (torch < 2.6, where ``--compile`` is refused) it does nothing.
    """
    if compile_unsupported_reason() is not None:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")
