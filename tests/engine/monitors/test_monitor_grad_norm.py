"""The grad-norm monitor: total grad norms folded on the device, reported every interval; spikes warn
only while the loss rises when clipping is on, always without it; vanishing norms warn."""
import logging

import pytest
import torch

from engine.callbacks import StepOutput
from engine.monitors.grad_norm import GradNormMonitor
from tests.engine.fakes import fake_trainer


class RecordingWriter:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))


def run_norms(monitor, losses, norms, caplog, writer=None, steps_in_epoch=10):
    trainer = fake_trainer(writer or RecordingWriter(), stage=1)
    with caplog.at_level(logging.INFO, logger="engine.monitors.grad_norm"):
        for step, (loss, norm) in enumerate(zip(losses, norms), start=1):
            monitor.on_optimizer_step(trainer, StepOutput(torch.tensor(loss), 2e-3, torch.tensor(norm), step, step,
                                                          steps_in_epoch))
    return [(record.levelno, record.getMessage()) for record in caplog.records]


def test_the_norm_is_written_every_interval_and_a_clipped_spike_on_a_flat_loss_is_not_a_warning(caplog):
    writer = RecordingWriter()
    norms = [0.5, 20.0, 0.5, 0.5, 0.5, 0.7, 0.5, 0.5, 0.9]
    messages = run_norms(GradNormMonitor(interval=3, grad_clip=1.0), [1.0] * 9, norms, caplog, writer, 9)
    written = writer.scalars["gradient_monitor/grad_norm"]
    assert [step for step, _ in written] == [3, 6, 9]  # the last update's norm at each report
    assert [value for _, value in written] == pytest.approx([0.5, 0.7, 0.9])
    assert [level for level, _ in messages] == [logging.INFO]
    assert messages[0][1].startswith("Clipped gradient spikes: 1 of the last 3 updates had a total grad norm > 10 "
                                     "(max 20) up to step 3")


def test_vanishing_grad_norm_warns(caplog):
    messages = run_norms(GradNormMonitor(interval=2), [1.0, 1.0], [1e-8, 1e-8], caplog, steps_in_epoch=9)
    assert [level for level, _ in messages] == [logging.WARNING]
    assert "Vanishing gradients: 2 of the last 2 updates" in messages[0][1]


SPIKES = [30.0, 0.5, 12.0, 0.5, 0.5]


def test_clipped_spikes_while_the_loss_falls_are_not_a_warning(caplog):
    """Measured: healthy from-scratch runs clip 1-16 spikes (norms up to 27) while learning well."""
    messages = run_norms(GradNormMonitor(interval=5, grad_clip=1.0), [1.0, 0.9, 0.95, 0.85, 0.8], SPIKES, caplog)
    assert [level for level, _ in messages] == [logging.INFO]
    assert messages[0][1].startswith("Clipped gradient spikes: 2 of the last 5 updates had a total grad norm > 10 "
                                     "(max 30) up to step 5; --grad-clip 1 scaled them down")


def test_clipped_spikes_while_the_loss_rises_warn_with_the_actions(caplog):
    losses, norms = [1.0] * 5 + [3.0] * 5, [0.5] * 5 + SPIKES  # quiet first check: the stage's lowest loss
    messages = run_norms(GradNormMonitor(interval=5, grad_clip=1.0), losses, norms, caplog)
    assert messages == [(logging.WARNING,
        "Exploding gradients: 2 of the last 5 updates had a total grad norm > 10 (max 30) up to step 10 (LR 0.002). "
        "--grad-clip 1 scaled these updates down, but the loss is rising (short loss EMA above 1.2 x its lowest in "
        "this stage). Actions: halve the LR (--lr 0.002 -> 0.001); tighten gradient clipping (--grad-clip 1 -> 0.7).")]


def test_unclipped_spikes_always_warn(caplog):
    messages = run_norms(GradNormMonitor(interval=5, grad_clip=0.0), [1.0, 0.9, 0.95, 0.85, 0.8], SPIKES, caplog)
    assert messages == [(logging.WARNING,
        "Exploding gradients: 2 of the last 5 updates had a total grad norm > 10 (max 30) up to step 5 (LR 0.002). "
        "Actions: halve the LR (--lr 0.002 -> 0.001); enable gradient clipping (--grad-clip 1.0).")]
