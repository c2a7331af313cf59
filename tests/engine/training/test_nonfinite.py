"""Non-finite guard: a NaN update is skipped without touching weights or the weight EMA."""
import pytest
import torch

from engine.build import build_trainer
from engine.callbacks import Callback, Order
from engine.training.nonfinite import NonFiniteGuard, TrainingDivergedError


class PoisonLoss(torch.nn.Module):
    """Wraps the criterion, returns NaN on chosen calls, and snapshots the weights and the EMA
    shadow before each call (i.e. after every completed or skipped update)."""

    def __init__(self, criterion, bad_calls, model, shadow):
        super().__init__()
        self.criterion, self.bad_calls, self.calls = criterion, set(bad_calls), 0
        self.model, self.shadow, self.before_call = model, shadow, {}

    def forward(self, output, masks):
        self.calls += 1
        self.before_call[self.calls] = ({k: v.clone() for k, v in self.model.named_parameters()},
                                        {k: v.clone() for k, v in self.shadow.state_dict().items()})
        losses = self.criterion(output, masks)
        if self.calls in self.bad_calls:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


class Snapshots(Callback):
    name = "snapshots"
    order = Order.WEIGHTS + 1  # after the EMA callback: sees its update

    def __init__(self):
        self.states = []

    def on_optimizer_step(self, trainer, step):
        ema = trainer.averaged_models["ema"]
        self.states.append((step.step, {k: v.clone() for k, v in trainer.model.state_dict().items()},
                            {k: v.clone() for k, v in ema.state_dict().items()}))


def test_nan_update_leaves_weights_and_ema_bitwise_unchanged(tiny_config, caplog):
    trainer = build_trainer(tiny_config(epochs=1, stage1_epochs=0, batch_size=4, use_ema=True, ema_decay=0.5))
    poison = PoisonLoss(trainer.criterion, {2}, trainer.model, trainer.averaged_models["ema"])  # 2nd of 3 updates
    trainer.criterion = poison
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    trainer.fit()
    assert [state[0] for state in snapshots.states] == [1, 2]  # 3 windows, one skipped
    assert trainer.guard.total_skipped == 1 and "Skipped update 2" in caplog.text
    # Weights after the skipped update (seen by the third window's loss) equal the weights after
    # update 1, and so does the EMA. (Buffers that a forward pass updates, like the router's
    # dispatch EMA, may move: no update ran.)
    _, weights_after_first, ema_after_first = snapshots.states[0]
    parameters_after_skip, ema_after_skip = poison.before_call[3]
    for key, value in parameters_after_skip.items():
        assert torch.equal(value, weights_after_first[key]), key
    for key, value in ema_after_skip.items():
        assert torch.equal(value, ema_after_first[key]), key


def test_guard_stops_after_consecutive_bad_updates():
    guard = NonFiniteGuard(max_bad_steps=3)
    nan, one, inf = torch.tensor(float("nan")), torch.tensor(1.0), torch.tensor(float("inf"))
    assert guard.non_finite(nan, None).tolist() == [True, False]
    assert guard.non_finite(one, inf).tolist() == [False, True] and guard.non_finite(one, one).tolist() == [False, False]
    guard.record(False, True, 1, 1e-3, False)
    guard.record(True, True, 2, 1e-3, False)  # a good step resets the count
    guard.record(True, False, 3, 1e-3, False)
    guard.record(False, False, 4, 1e-3, False)
    with pytest.raises(TrainingDivergedError, match="last.pth"):
        guard.record(False, True, 5, 1e-3, False)


@pytest.mark.parametrize("loss_finite, scaler, level", [(True, True, "INFO"), (False, True, "WARNING"),
                                                        (True, False, "WARNING")])
def test_only_an_fp16_gradient_overflow_is_logged_as_routine(loss_finite, scaler, level, caplog):
    """GradScaler skips (finite loss, overflowing fp16 gradients) are its normal work: INFO, not a warning."""
    caplog.set_level("INFO", logger="engine.training.nonfinite")
    NonFiniteGuard().record(loss_finite, False, 7, 1e-3, scaler)
    [record] = [r for r in caplog.records if r.name == "engine.training.nonfinite"]
    assert record.levelname == level and "Skipped update 7" in record.message
    assert ("GradScaler" in record.message) == (level == "INFO")
