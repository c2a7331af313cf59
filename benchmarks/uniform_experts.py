"""The field table's "experts averaged uniformly, no router" ablation: ``train_ultimate.py`` with every
router gate fixed at zero (a benchmark-side patch; the product has no such setting).

Run as ``python benchmarks/uniform_experts.py train --num-experts 7 --top-k 7 --router-noise 0 ...``:
with the gate's weights and bias at zero and frozen (``requires_grad=False``, so AdamW never moves
them), every image's router logits are all zero, top-k over all experts keeps every one and the
softmax gives each the weight 1/E: the decoder output is the plain mean of the experts. The
balance loss is then the constant 1 (no gradient). The zero gate is saved in the checkpoint, so
``eval`` and the table's scoring rebuild the same uniform average without this patch.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fix_router_gates_at_zero() -> None:
    """Every ``TopKRouter`` built after this call starts with a zero, frozen gate."""
    from torch import nn

    from models import router

    original_init = router.TopKRouter.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.gate.requires_grad_(False)

    router.TopKRouter.__init__ = init


def main() -> int:
    sys.path.insert(0, str(REPO))
    fix_router_gates_at_zero()
    import train_ultimate

    return train_ultimate.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
