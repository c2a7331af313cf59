"""Expert-usage monitor: shares from the router buffer, TensorBoard, epoch record and collapse warnings."""
import io
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine.callbacks import StepOutput
from engine.monitors.expert_usage import ExpertUsageMonitor, find_dispatch_fraction_owner, usage_alerts


class FakeRouter(nn.Module):
    def __init__(self, num_experts):
        super().__init__()
        self.register_buffer("dispatch_fraction", torch.full((num_experts,), 1.0 / num_experts))


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def make_trainer(num_experts=3, writer=None):
    model = nn.Sequential(nn.Linear(2, 2), FakeRouter(num_experts))
    logging_stub = SimpleNamespace(writer=writer)
    return SimpleNamespace(unwrapped_model=model, data=SimpleNamespace(is_main_process=True),
                           callbacks=SimpleNamespace(get=lambda name: logging_stub if name == "logging" else None))


def run_epoch(monitor, trainer, shares_per_step, epoch=1):
    router = trainer.unwrapped_model[1]
    monitor.on_epoch_start(trainer)
    for index, shares in enumerate(shares_per_step, start=1):
        router.dispatch_fraction.copy_(torch.tensor(shares))  # the router updates it in place each forward
        monitor.on_optimizer_step(trainer, StepOutput(torch.tensor(1.0), 1e-3, None, index, index,
                                                      len(shares_per_step)))
    record = {"epoch": epoch}
    monitor.on_epoch_end(trainer, record)
    return record


def test_finds_the_router_of_the_real_model():
    from models.router import TopKRouter

    model = nn.Sequential(nn.Conv2d(3, 4, 1), TopKRouter(4, num_experts=3))
    assert find_dispatch_fraction_owner(model) is model[1]
    assert find_dispatch_fraction_owner(nn.Linear(2, 2)) is None


def test_epoch_mean_in_record_and_tensorboard_at_log_steps():
    writer = RecordingWriter()
    monitor, trainer = ExpertUsageMonitor(log_interval=2), make_trainer(writer=writer)
    monitor.on_train_start(trainer)
    record = run_epoch(monitor, trainer, [[0.5, 0.3, 0.2], [0.3, 0.3, 0.4], [0.4, 0.3, 0.3]])
    assert record["expert_usage"] == pytest.approx([0.4, 0.3, 0.3], abs=1e-6)
    assert "expert_alerts" not in record
    assert sorted({step for _, _, step in writer.scalars}) == [1, 2, 3]  # step 1, interval, epoch end
    at_step_two = [(tag, value) for tag, value, step in writer.scalars if step == 2]
    assert [tag for tag, _ in at_step_two] == ["moe/expert_0", "moe/expert_1", "moe/expert_2"]
    assert [value for _, value in at_step_two] == pytest.approx([0.3, 0.3, 0.4])


def test_warns_when_one_expert_dominates_the_whole_epoch(caplog):
    monitor, trainer = ExpertUsageMonitor(log_interval=100), make_trainer()
    monitor.on_train_start(trainer)
    with caplog.at_level(logging.WARNING, logger="engine.monitors.expert_usage"):
        record = run_epoch(monitor, trainer, [[0.95, 0.03, 0.02], [0.92, 0.05, 0.03]])
    assert any("expert 0 took more than 90 %" in alert for alert in record["expert_alerts"])
    assert any("Expert usage, epoch 1" in r.getMessage() for r in caplog.records)
    # one step below 90 % within the epoch: not "the whole epoch"
    record = run_epoch(monitor, trainer, [[0.95, 0.03, 0.02], [0.85, 0.1, 0.05]], epoch=2)
    assert not any("took more than" in alert for alert in record.get("expert_alerts", []))


def test_warns_when_an_expert_goes_unused():
    monitor, trainer = ExpertUsageMonitor(log_interval=100), make_trainer(num_experts=4)
    monitor.on_train_start(trainer)
    record = run_epoch(monitor, trainer, [[0.5, 0.495, 0.005, 0.0]] * 3)
    assert record["expert_alerts"] == [usage_alerts([0.5, 0.495, 0.005, 0.0], 0.495)[0]]
    assert "expert(s) 2, 3 stayed below 1 %" in record["expert_alerts"][0]


def test_no_host_sync_per_step(monkeypatch):
    monitor, trainer = ExpertUsageMonitor(log_interval=1000), make_trainer()
    monitor.on_train_start(trainer)
    run_epoch(monitor, trainer, [[0.4, 0.3, 0.3]])  # warm-up epoch: allocations, flush at step 1

    def forbidden(*args, **kwargs):
        raise AssertionError("host transfer on a non-logging step")

    monitor.on_epoch_start(trainer)
    monitor.on_optimizer_step(trainer, StepOutput(torch.tensor(1.0), 1e-3, None, 1, 1, 5))
    for method in ("item", "cpu", "tolist", "numpy", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, method, forbidden)
    for step in range(2, 5):
        monitor.on_optimizer_step(trainer, StepOutput(torch.tensor(1.0), 1e-3, None, step, step, 5))
    monkeypatch.undo()
    assert monitor._steps == 4


def test_idle_without_router_and_state_round_trips():
    monitor = ExpertUsageMonitor()
    trainer = SimpleNamespace(unwrapped_model=nn.Linear(2, 2), data=SimpleNamespace(is_main_process=True))
    monitor.on_train_start(trainer)
    monitor.on_epoch_start(trainer)
    monitor.on_optimizer_step(trainer, StepOutput(torch.tensor(1.0), 1e-3, None, 1, 1, 1))
    record = {"epoch": 1}
    monitor.on_epoch_end(trainer, record)
    assert "expert_usage" not in record
    monitor.last_usage = [0.25, 0.75]
    buffer = io.BytesIO()
    torch.save(monitor.state_dict(), buffer)
    buffer.seek(0)
    restored = ExpertUsageMonitor()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.last_usage == [0.25, 0.75]
