"""The callback protocol: declared order, the Trainer's services, state round trip, cleanup on errors."""
import signal

import pytest

from engine.build import build_callbacks, build_trainer
from engine.callbacks import Callback, CallbackList, Order
from engine.callbacks.run_log import LoggingCallback
from engine.callbacks.save_checkpoints import CheckpointCallback
from engine.callbacks.weight_ema import WeightEMACallback
from engine.monitors import GradientDriftMonitor, LossEMAMonitor, PostEpochEvaluator
from tests.state_compare import assert_same_state


def named(name, order):
    return type(name, (Callback,), {"name": name, "order": order})()


def test_callbacks_run_in_declared_order_whatever_order_they_are_added():
    callbacks = CallbackList([named("save", Order.CHECKPOINT), named("log", Order.LOGGING), None,
                              named("stop", Order.CONTROL), named("monitor_a", Order.MONITOR)])
    callbacks.add(named("monitor_b", Order.MONITOR))  # ties keep the order they were added in
    callbacks.add(named("late_control", Order.CONTROL))
    assert [c.name for c in callbacks] == ["stop", "late_control", "monitor_a", "monitor_b", "log", "save"]
    with pytest.raises(ValueError, match="'log' is already added"):
        callbacks.add(named("log", Order.LOGGING))


def test_the_full_set_puts_weights_first_monitors_before_logging_and_checkpoint_last(tiny_config):
    config = tiny_config(use_ema=True, time_limit="1h", stop_after_epochs=1)
    callbacks = list(CallbackList(build_callbacks(config)))
    position = {type(callback): index for index, callback in enumerate(callbacks)}
    assert isinstance(callbacks[-1], CheckpointCallback)
    assert position[WeightEMACallback] < position[LossEMAMonitor] < position[PostEpochEvaluator]
    assert position[GradientDriftMonitor] < position[PostEpochEvaluator] < position[LoggingCallback]
    assert all(callback.order <= Order.MONITOR for callback in callbacks[:position[LossEMAMonitor]])


def test_trainer_state_round_trips_into_a_fresh_trainer(tiny_config, tmp_path):
    trained = build_trainer(tiny_config(epochs=2, use_ema=True, checkpoint_dir=str(tmp_path / "a")))
    trained.fit()
    fresh = build_trainer(tiny_config(epochs=2, use_ema=True, checkpoint_dir=str(tmp_path / "b")))
    fresh.load_state_dict(trained.state_dict())
    assert (fresh.epoch, fresh.global_step) == (trained.epoch, trained.global_step)
    assert_same_state(trained.state_dict(), fresh.state_dict())
    assert_same_state(trained.averaged_models["ema"].state_dict(), fresh.averaged_models["ema"].state_dict())


class FailAtStep(Callback):
    name = "fail_at_step"

    def __init__(self, step):
        self.step, self.seen = step, None

    def on_optimizer_step(self, trainer, step):
        if step.step == self.step:
            raise RuntimeError("boom")

    def on_exception(self, trainer, error):
        self.seen = error


def test_an_error_in_training_still_tears_everything_down(tiny_config):
    def previous_handler(signum, frame):
        pass

    old_handler = signal.signal(signal.SIGTERM, previous_handler)
    try:
        trainer = build_trainer(tiny_config(epochs=2, grad_monitor_interval=1))
        failing = FailAtStep(2)
        trainer.add_callback(failing)
        with pytest.raises(RuntimeError, match="boom"):
            trainer.fit()
        assert isinstance(failing.seen, RuntimeError)
        assert signal.getsignal(signal.SIGTERM) is previous_handler  # the stop handler is gone
        logging_callback = next(c for c in trainer.callbacks if isinstance(c, LoggingCallback))
        assert logging_callback.writer is None  # closed: no open event file
        assert not any(module._backward_hooks for module in trainer.unwrapped_model.modules())
    finally:
        signal.signal(signal.SIGTERM, old_handler)
