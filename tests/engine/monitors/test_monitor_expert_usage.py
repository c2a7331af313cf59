"""Expert-usage monitor: shares from the model output, TensorBoard, epoch record and collapse warnings."""
import io
import logging
from types import SimpleNamespace

import pytest
import torch

from engine.callbacks import StepOutput
from engine.monitors.expert_usage import ExpertUsageMonitor


class RecordingTrainer:
    """The Trainer services the monitor uses: ``log_scalar``, ``is_logging`` and the rank."""

    def __init__(self, logging=True):
        self.scalars = []
        self.is_logging = logging
        self.data = SimpleNamespace(is_main_process=True)

    def log_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def make_trainer(logging=True):
    return RecordingTrainer(logging)


def step_output(step, steps_in_epoch, shares=None):
    fractions = None if shares is None else torch.tensor(shares)
    return StepOutput(torch.tensor(1.0), 1e-3, None, step, step, steps_in_epoch, expert_fractions=fractions)


def run_epoch(monitor, trainer, shares_per_step, epoch=1):
    monitor.on_epoch_start(trainer)
    for index, shares in enumerate(shares_per_step, start=1):
        monitor.on_optimizer_step(trainer, step_output(index, len(shares_per_step), shares))
    record = {"epoch": epoch}
    monitor.on_epoch_end(trainer, record)
    return record


def test_the_real_model_reports_its_expert_fractions():
    from engine.config import build_config
    from models import build_model
    from tests.conftest import TINY_SETTINGS

    model = build_model(build_config({}, dict(TINY_SETTINGS)).model_config(synthetic=True))
    output = model(torch.randn(2, 3, 48, 48))
    assert output.expert_fractions.shape == (3,)
    assert float(output.expert_fractions.sum()) == pytest.approx(1.0, abs=1e-5)


def test_epoch_mean_in_record_and_tensorboard_at_log_steps():
    monitor, trainer = ExpertUsageMonitor(log_interval=2), make_trainer()
    writer = trainer
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
    monitor, trainer = ExpertUsageMonitor(log_interval=100), make_trainer()
    monitor.on_train_start(trainer)
    # Experts 2 (0.5 %) and 3 (0 %) stay under the 1 % floor at every step; the largest share, 50 %,
    # is far from the 90 % of a collapse: exactly one alert, naming 2 and 3 and the fix.
    record = run_epoch(monitor, trainer, [[0.5, 0.495, 0.005, 0.0]] * 3)
    assert record["expert_alerts"] == [
        "expert(s) 2, 3 stayed below 1 % of the routing for the whole epoch (unused); "
        "raise --moe-loss-weight or --router-noise"]
    # Expert 2 idle for three steps, then 2 % on one: its epoch mean (0.5 %) is under the floor, but
    # it was used during the epoch, so only expert 3 "stayed below" it.
    record = run_epoch(monitor, trainer, [[0.5, 0.5, 0.0, 0.0]] * 3 + [[0.5, 0.48, 0.02, 0.0]], epoch=2)
    assert len(record["expert_alerts"]) == 1 and record["expert_alerts"][0].startswith("expert(s) 3 stayed below 1 %")


def test_no_host_sync_per_step(monkeypatch):
    monitor, trainer = ExpertUsageMonitor(log_interval=1000), make_trainer()
    monitor.on_train_start(trainer)
    run_epoch(monitor, trainer, [[0.4, 0.3, 0.3]])  # warm-up epoch: allocations, flush at step 1

    def forbidden(*args, **kwargs):
        raise AssertionError("host transfer on a non-logging step")

    monitor.on_epoch_start(trainer)
    monitor.on_optimizer_step(trainer, step_output(1, 5, [0.4, 0.3, 0.3]))
    shares = [step_output(step, 5, [0.4, 0.3, 0.3]) for step in range(2, 5)]
    for method in ("item", "cpu", "tolist", "numpy", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, method, forbidden)
    for step in shares:
        monitor.on_optimizer_step(trainer, step)
    monkeypatch.undo()
    record = {"epoch": 2}
    monitor.on_epoch_end(trainer, record)
    assert record["expert_usage"] == pytest.approx([0.4, 0.3, 0.3], abs=1e-6)  # all 4 steps were counted


def test_idle_without_router_and_state_round_trips():
    monitor, trainer = ExpertUsageMonitor(), make_trainer()
    monitor.on_train_start(trainer)
    monitor.on_epoch_start(trainer)
    monitor.on_optimizer_step(trainer, step_output(1, 1))
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


def test_a_single_expert_is_not_a_router_collapse():
    """--num-experts 1 (the field table's ablation row) routes everything to expert 0 by construction."""
    from engine.monitors.expert_usage import usage_alerts

    assert usage_alerts([1.0], lowest_top=1.0) == []
    assert len(usage_alerts([1.0, 0.0], lowest_top=1.0)) == 2  # two experts, one takes all: collapse and unused
