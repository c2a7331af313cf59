"""The epoch-1 LR check, judged from step-loss arrays against their own noise."""
import logging

import pytest
import torch

from engine.callbacks import StepOutput
from engine.monitors.lr_check import first_epoch_lr_check, tenth_of
from engine.monitors.post_epoch import PostEpochEvaluator, _report
from tests.engine.monitors.test_monitor_post_epoch import fake_trainer, run_epochs

Z = 3.0


def steps(start, end, count=50, noise=0.1, seed=0):
    """``count`` step losses going linearly from ``start`` to ``end``, each batch off by ``noise`` (relative)."""
    generator = torch.Generator().manual_seed(seed)
    trend = torch.linspace(start, end, count, dtype=torch.float64)
    return trend * (1 + noise * torch.randn(count, generator=generator, dtype=torch.float64))


def judged(losses, all_warmup=False):
    tenth = tenth_of(len(losses))
    return first_epoch_lr_check(losses[:tenth], losses[-tenth:], Z, all_warmup)


@pytest.mark.parametrize("losses, all_warmup, verdict, words", [
    (steps(2.0, 1.5), False, "ok", "the loss went "),
    (steps(2.0, 3.0), False, "too_high", "the loss rose during epoch 1 beyond its noise"),
    (steps(2.0, 3.0), True, "too_high", "probably too high"),  # a rise counts even in warmup
    (steps(2.0, 2.0, noise=0.002), False, "too_low", "the LR may be too low; try 2-3x --lr"),
    (steps(2.0, 2.0, noise=0.002), True, "warmup", "mostly LR warmup: too early to judge"),
    (steps(2.0, 2.0, noise=0.3), False, "ok", ""),  # too noisy to say the loss barely moved
    (steps(2.0, 1.99, noise=0.3), False, "ok", ""),
])
def test_verdicts_need_evidence_beyond_the_step_noise(losses, all_warmup, verdict, words, caplog):
    check = judged(losses, all_warmup)
    assert check["verdict"] == verdict and words in check["message"], check
    health = {"lr_sanity": check, "issues": [check["message"]] if verdict in ("too_low", "too_high") else []}
    from engine.monitors.health_rules import EpochStats

    with caplog.at_level(logging.INFO):
        _report(EpochStats(1, 1.0), health)
    assert words in caplog.text


def test_a_non_finite_loss_is_too_high():
    losses = steps(2.0, 1.0)
    losses[-2] = float("nan")
    assert judged(losses)["verdict"] == "too_high"


def test_noisy_healthy_first_epochs_pass():
    """A falling loss with 20 % batch-to-batch noise: never judged too high or too low, over 200 draws."""
    verdicts = {judged(steps(2.0, 1.6, noise=0.2, seed=seed))["verdict"] for seed in range(200)}
    assert verdicts == {"ok"}


def test_short_epochs_are_not_judged():
    assert tenth_of(5) == 0 and tenth_of(6) == 3 and tenth_of(50) == 5 and tenth_of(400) == 40


def test_the_callback_collects_the_first_and_last_tenth_on_the_device():
    evaluator, trainer = PostEpochEvaluator(), fake_trainer()
    losses = steps(2.0, 2.0, count=40, noise=0.001)
    for step, loss in enumerate(losses, start=1):
        evaluator.on_optimizer_step(trainer, StepOutput(loss.float(), 1e-3, None, step, step, 40))
    record = run_epochs(evaluator, trainer, [1.99])[0]
    assert record["health"]["lr_sanity"]["verdict"] == "too_low"
    assert "too low" in record["health"]["issues"][0]
    expected = first_epoch_lr_check(losses[:4], losses[-4:], evaluator.budget.z)
    assert record["health"]["lr_sanity"]["loss_change"] == pytest.approx(expected["loss_change"], abs=1e-3)
