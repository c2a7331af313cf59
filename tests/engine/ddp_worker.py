"""Run under torchrun by tests/engine/test_ddp.py: train, then dump this rank's final state."""
import json
import sys
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.build import build_trainer  # noqa: E402
from engine.config import build_config  # noqa: E402
from engine.distributed import shutdown  # noqa: E402
from tests.engine.capture_backend import CountingBackend  # noqa: E402


def main(settings_json: str, output: str) -> None:
    """Train with ``settings_json``; with ``"compile": true`` graphs go through :class:`CountingBackend`."""
    settings = json.loads(settings_json)
    backend = CountingBackend()
    with torch.compiler.set_stance("default", force_backend=backend) if settings.get("compile") else nullcontext():
        trainer = build_trainer(build_config({}, settings))
        trainer.fit()
    ema = trainer.averaged_models.get("ema")
    torch.save({"model": trainer.unwrapped_model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "compiled_calls": backend.calls}, f"{output}/rank{trainer.distributed.rank}.pt")
    shutdown(trainer.distributed)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
