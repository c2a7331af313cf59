"""Loss-EMA monitor: pandas oracle, step 1, state round trip, no host sync, TensorBoard buffering."""
import io

import pandas as pd
import pytest
import torch

from engine.callbacks import CallbackList, StepOutput
from engine.monitors.loss_ema import LossEMA, LossEMAMonitor
from tests.engine.fakes import fake_trainer


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def step_output(loss, step, steps_in_epoch=1000):
    return StepOutput(loss=torch.tensor(loss), lr=1e-3, grad_norm=None, step=step,
                      step_in_epoch=(step - 1) % steps_in_epoch + 1, steps_in_epoch=steps_in_epoch)


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999])
def test_matches_pandas_ewm_adjust_true(beta):
    losses = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 0.5
    ema = LossEMA(beta)
    values = torch.stack([ema.update(loss) for loss in losses]).double()
    oracle = pd.Series(losses.numpy()).ewm(alpha=1 - beta, adjust=True).mean().to_numpy()
    assert torch.allclose(values, torch.tensor(oracle), rtol=0, atol=1e-6)


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999])
def test_step_one_equals_first_loss(beta):
    assert LossEMA(beta).update(torch.tensor(2.75)).item() == pytest.approx(2.75, rel=1e-6)


def test_rejects_beta_outside_unit_interval():
    with pytest.raises(ValueError, match="beta"):
        LossEMA(1.0)


def test_state_round_trips_through_weights_only_load():
    first = LossEMAMonitor(beta=0.95, log_interval=1000)
    trainer = fake_trainer()
    for step in range(1, 41):
        first.on_optimizer_step(trainer, step_output(1.0 + 0.1 * (step % 7), step))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"ema_state"}
    second = LossEMAMonitor(beta=0.95, log_interval=1000)
    second.load_state_dict(state)
    for step in range(41, 51):
        loss = step_output(0.5 + 0.01 * step, step)
        first.on_optimizer_step(trainer, loss)
        second.on_optimizer_step(trainer, loss)
    assert first.ema.count == second.ema.count == 50
    assert torch.equal(first.ema.value, second.ema.value)


def test_state_without_ema_state_starts_fresh_silently(caplog):
    monitor = LossEMAMonitor(beta=0.99)
    monitor.ema.update(torch.tensor(3.0))
    callbacks = CallbackList([monitor])
    callbacks.load_state_dict({"loss_ema": {}})  # an older checkpoint: the key is missing
    assert monitor.ema.count == 0 and monitor.ema.value is None
    assert monitor.ema.update(torch.tensor(1.5)).item() == pytest.approx(1.5)
    assert not [record for record in caplog.records if record.levelname in ("WARNING", "ERROR")]


def test_update_causes_no_host_transfer(monkeypatch):
    monitor = LossEMAMonitor(beta=0.99, log_interval=1000)
    trainer = fake_trainer(RecordingWriter())
    monitor.on_optimizer_step(trainer, step_output(1.0, 1))  # step 1 flushes (console line at step 1)
    losses = [torch.tensor(float(i)) for i in range(2, 30)]

    def forbidden(*args, **kwargs):
        raise AssertionError("host transfer during the loss-EMA update")

    for method in ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, method, forbidden)
    for step, loss in enumerate(losses, start=2):
        monitor.on_optimizer_step(trainer, StepOutput(loss, 1e-3, None, step, step, 1000))
    monkeypatch.undo()
    assert monitor.ema.count == 1 + len(losses)


def test_writes_every_step_at_flush_and_feeds_the_console():
    writer = RecordingWriter()
    monitor = LossEMAMonitor(beta=0.5, log_interval=4)
    trainer = fake_trainer(writer)
    losses = [4.0, 2.0, 1.0, 3.0, 2.0, 2.0]
    for step, loss in enumerate(losses, start=1):
        monitor.on_optimizer_step(trainer, step_output(loss, step, steps_in_epoch=10))
        if step == 3:  # step 1 flushed; steps 2-3 are still on the device
            assert [s for _, _, s in writer.scalars] == [1]
    assert [s for _, _, s in writer.scalars] == [1, 2, 3, 4]  # flushed at the log interval
    monitor.on_epoch_end(trainer, record := {})
    assert [s for _, _, s in writer.scalars] == [1, 2, 3, 4, 5, 6]
    assert {tag for tag, _, _ in writer.scalars} == {"train/loss_ema"}
    oracle = pd.Series(losses).ewm(alpha=0.5, adjust=True).mean().tolist()
    assert [v for _, v, _ in writer.scalars] == pytest.approx(oracle, abs=1e-6)
    assert monitor.console_extras() == {"EMA": f"{oracle[-1]:.4f}"}
    assert record["train_loss_ema"] == pytest.approx(oracle[-1], abs=1e-6)


def test_works_without_a_logging_callback():
    monitor = LossEMAMonitor(beta=0.9, log_interval=1)
    trainer = fake_trainer(None)
    monitor.on_optimizer_step(trainer, step_output(2.0, 1))
    assert monitor.console_extras() == {"EMA": "2.0000"}
