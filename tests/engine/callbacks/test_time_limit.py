"""--time-limit stops cleanly with a checkpoint, and the run resumes to the end; time is a fake clock."""
from types import SimpleNamespace

import pytest

from engine.build import build_trainer
from engine.callbacks.stopping import TimeLimitCallback
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from engine.config import ConfigError, parse_duration
from engine.training.run_config import how_to_continue


class FakeClock:
    """A monotonic clock that moves only when told: ``tick`` seconds per reading, or ``advance``."""

    def __init__(self, tick=0.0):
        self.now, self.tick = 1000.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now

    def advance(self, seconds):
        self.now += seconds


class StopRecorder:
    def __init__(self):
        self.reasons = []
        self.config = SimpleNamespace(checkpoint_dir="ckpt", time_limit="100s")

    def request_stop(self, reason, exit_code=0):
        self.reasons.append(reason)


def test_parse_duration():
    assert parse_duration("11.5h") == 11.5 * 3600
    assert parse_duration("90m") == 5400 and parse_duration("3600s") == 3600
    with pytest.raises(ConfigError, match="has no unit: write 42h, 2520m or 151200s"):
        parse_duration("42")  # a bare number: hours or seconds? (tests/cli/test_stop_messages.py: the CLI line)


def steps_until_stop(callback, clock, step_seconds):
    """Drive the callback with steps of the given lengths; the 1-based step that requested the stop."""
    trainer = StopRecorder()
    callback.on_train_start(trainer)
    for index, seconds in enumerate(step_seconds, start=1):
        clock.advance(seconds)
        callback.on_optimizer_step(trainer, None)
        if trainer.reasons:
            return index, trainer.reasons
    return None, trainer.reasons


def test_stops_once_elapsed_plus_twice_the_longest_step_plus_the_reserve_reaches_the_limit():
    clock = FakeClock()
    # 5 s steps, limit 100 s, reserve 10 s: step k ends at 5k and stops when 5k + 2 * 5 + 10 >= 100,
    # i.e. k = 16 (at k = 15: 75 + 20 = 95 < 100).
    step, reasons = steps_until_stop(TimeLimitCallback(100.0, reserve_seconds=10.0, clock=clock), clock, [5.0] * 30)
    assert step == 16 and reasons == ["time limit of 100s reached; " + how_to_continue("ckpt", "100s")]
    # One 20 s step (the 3rd) raises the margin to 2 * 20: 5 (k - 1) + 20 + 40 + 10 >= 100 at k = 7.
    clock = FakeClock()
    step, _ = steps_until_stop(TimeLimitCallback(100.0, reserve_seconds=10.0, clock=clock), clock,
                               [5.0, 5.0, 20.0] + [5.0] * 30)
    assert step == 7
    # Time before on_train_start (model build, data scan) does not count: the clock restarts there.
    clock = FakeClock()
    callback = TimeLimitCallback(100.0, reserve_seconds=10.0, clock=clock)
    clock.advance(90.0)
    assert steps_until_stop(callback, clock, [5.0] * 30)[0] == 16


def test_the_default_reserve_is_two_percent_of_the_limit_at_most_five_minutes():
    assert TimeLimitCallback(100.0).reserve_seconds == pytest.approx(2.0)
    assert TimeLimitCallback(11.5 * 3600).reserve_seconds == 300.0
    clock = FakeClock()
    # 1 s steps, limit 100 s, reserve 2 s: k + 2 + 2 >= 100 at k = 96.
    assert steps_until_stop(TimeLimitCallback(100.0, clock=clock), clock, [1.0] * 200)[0] == 96


def test_time_limit_stops_with_checkpoint_then_resume_completes(tiny_config, tmp_path):
    trainer = build_trainer(tiny_config(epochs=3, time_limit="100s"))
    callback = next(callback for callback in trainer.callbacks if isinstance(callback, TimeLimitCallback))
    # Every optimizer step takes 10 s of the fake clock; the reserve of 100 s is 2 s: the step ending
    # at 10k stops once 10k + 2 * 10 + 2 >= 100, i.e. at step 8 of the 9 (3 epochs of 3 steps).
    callback.clock = FakeClock(tick=10.0)
    trainer.fit()
    assert trainer.should_stop and "time limit" in trainer.stop_reason
    saved = load_checkpoint(tmp_path / "ckpt" / "last.pth")
    assert progress(saved)["global_step"] == trainer.global_step == 8
    resumed = build_trainer(tiny_config(epochs=3, resume_from="auto"))
    resumed.fit()
    assert resumed.epoch == 3 and resumed.global_step == 9
