"""``--compile``: compiled training matches eager training, and the drift monitor still measures.

Inductor takes minutes per graph on a 2-core CPU, so these tests force a counting capture-only
backend with ``torch.compiler.set_stance(force_backend=...)``: Dynamo still traces the real model
through the real Trainer (graph capture, recompiles on unfreezing, eager measured steps); only the
code generation step differs.
"""
from __future__ import annotations

import pytest
import torch

from engine.build import build_trainer
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import saved_weights
from engine.config import ConfigError
from engine.runtime.compile import compile_unsupported_reason
from tests.engine.capture_backend import CountingBackend

pytestmark = [
    pytest.mark.skipif(compile_unsupported_reason() is not None, reason="torch without set_stance"),
    # The first encoder block's input is the image (no grad); the monitor skips it on purpose.
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
]

# Gradient monitor every 2 updates: measured (eager) and compiled updates alternate.
SETTINGS = dict(epochs=3, stage1_epochs=1, progressive_unfreeze=True, unfreeze_interval=1,
                grad_monitor_interval=2, use_ema=True, ema_decay=0.9)


@pytest.fixture()
def counting_backend():
    backend = CountingBackend()
    torch._dynamo.reset()
    with torch.compiler.set_stance("default", force_backend=backend):
        yield backend
    torch._dynamo.reset()


def _fit(config):
    trainer = build_trainer(config)
    # Dense experts in both runs: compiled graphs run every expert on every image (static shapes), eager
    # CPU steps only the routed ones. Each step agrees within 1e-6 (tests/models/test_expert_dispatch.py),
    # but summed in another order over a run the weights drift past this comparison's 1e-4.
    trainer.unwrapped_model.decoder.sparse_on_cpu = False
    trainer.fit()
    return trainer


def drift_monitor(trainer):
    from engine.monitors import GradientDriftMonitor

    return next(callback for callback in trainer.callbacks if isinstance(callback, GradientDriftMonitor))


def test_compiled_run_matches_eager_and_keeps_measuring(tiny_config, tmp_path, counting_backend):
    eager = _fit(tiny_config(**SETTINGS, checkpoint_dir=str(tmp_path / "eager")))
    assert counting_backend.calls == 0
    compiled = _fit(tiny_config(**SETTINGS, compile=True, checkpoint_dir=str(tmp_path / "compiled")))

    # Compiled graphs ran the unmeasured updates and validation; unfreezing added graphs.
    updates = compiled.global_step
    assert counting_backend.calls >= updates // 2 and counting_backend.graphs >= 3
    # Measured updates ran eagerly, so the monitor's hooks saw the blocks in both runs.
    eager_detector, compiled_detector = drift_monitor(eager).detector, drift_monitor(compiled).detector
    # the raw gains each block recorded (its baseline checks) and the relative gains judged after them
    assert compiled_detector.early.keys() == eager_detector.early.keys() and eager_detector.early
    for name, gains in eager_detector.early.items():
        assert compiled_detector.early[name] == pytest.approx(gains, rel=1e-4), name
    assert list(compiled_detector.history) == pytest.approx(list(eager_detector.history), rel=1e-4)
    for name, value in eager.unwrapped_model.state_dict().items():
        torch.testing.assert_close(compiled.unwrapped_model.state_dict()[name], value, rtol=1e-4, atol=1e-5,
                                   msg=name)
    # Compiled in place: checkpoints carry the eager parameter names (no "_orig_mod."), so they
    # resume with or without --compile.
    eager_saved = load_checkpoint(tmp_path / "eager" / "last.pth")
    compiled_saved = load_checkpoint(tmp_path / "compiled" / "last.pth")
    for weights in ("base", "ema"):
        assert saved_weights(compiled_saved, weights).keys() == saved_weights(eager_saved, weights).keys()


def test_compile_needs_set_stance(monkeypatch):
    from engine.runtime.cuda_device import select_device

    monkeypatch.delattr(torch.compiler, "set_stance")
    with pytest.raises(ConfigError, match="--compile: needs torch >= 2.6"):
        select_device("cpu", compile=True)  # train, its dry run and build_trainer all start with it
