"""Gradient drift: the alert rule on synthetic gain sequences, and real gains from a real backward."""
import io
import logging
import math
import random

import pytest
import torch

from engine.callbacks import StepOutput
from engine.monitors.gradient_drift import DriftDetector, GainProbe, GradientDriftMonitor, find_blocks
from tests.engine.fakes import fake_trainer as trainer_services


class RecordingWriter:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))


BLOCKS = ("encoder.stage0", "encoder.stage1", "decoder.fusion.smooth.0", "decoder.experts.0")
SCALES = (0.3, 1.0, 21.0, 2.4)  # raw gains of very different sizes, as measured on healthy runs


def gains_at(relative: float, noise: float = 0.0, rng=None):
    """Block gains that are ``relative`` x each block's own scale (times optional noise)."""
    rng = rng or random.Random(0)
    return {name: scale * relative * (1 + rng.uniform(-noise, noise)) for name, scale in zip(BLOCKS, SCALES)}


def test_raw_gain_sizes_do_not_matter_only_their_change():
    detector = DriftDetector(window=10, consecutive=3)
    checks = [detector.check(gains_at(1.0)) for _ in range(50)]
    assert [check.relative_gain for check in checks[:3]] == [None] * 3  # the baseline checks
    assert all(check.relative_gain == pytest.approx(1.0) and not check.reasons for check in checks[3:])
    assert checks[-1].mean_gain > 2  # the raw mean (24.7 / 4) would have alarmed the old absolute rule


def test_noisy_healthy_gains_that_settle_below_the_start_never_alert():
    rng = random.Random(0)
    detector = DriftDetector()
    settle = [1.0] * 3 + [0.9 - 0.2 * min(1.0, i / 20) for i in range(1000)]  # 0.9 -> 0.7, as measured
    checks = [detector.check(gains_at(level, noise=0.15, rng=rng)) for level in settle]
    assert not any(check.alert for check in checks)


@pytest.mark.parametrize("consecutive", [1, 3, 5])
def test_amplifying_gradients_alert_within_consecutive_checks_of_crossing(consecutive):
    detector = DriftDetector(window=10, gain_threshold=2.0, drift_threshold=100.0, consecutive=consecutive,
                             rewarn_every=1000)
    ramp = [1.0] * 3 + [1.0 + 2.0 * i / 199 for i in range(200)]
    alerts = [i for i, level in enumerate(ramp) if detector.check(gains_at(level)).alert]
    crossing = next(i for i, level in enumerate(ramp) if level > 2.0)
    assert alerts == [crossing + consecutive - 1]


def test_a_lasting_streak_warns_again_every_rewarn_checks():
    detector = DriftDetector(gain_threshold=2.0, drift_threshold=100.0, consecutive=3, rewarn_every=10)
    levels = [1.0] * 3 + [3.0] * 40
    alerts = [i for i, level in enumerate(levels) if detector.check(gains_at(level)).alert]
    first = 3 + 2  # the third flagged check
    assert alerts == [first, first + 10, first + 20, first + 30]


def test_a_relative_rise_alerts_below_the_bound():
    detector = DriftDetector(window=10, gain_threshold=5.0, drift_threshold=0.5, consecutive=3)
    levels = [1.0] * 3 + [0.8] * 10 + [1.0, 1.25, 1.3, 1.35]  # +56 %, +63 %, +69 % vs the oldest in the window
    checks = [detector.check(gains_at(level)) for level in levels]
    assert [i for i, check in enumerate(checks) if check.alert] == [16]
    assert checks[-1].drift == pytest.approx(0.55 / 0.8)
    assert "relative gain +69% vs 9 checks ago" in checks[-1].reasons[0]


def test_a_new_stage_sets_new_baselines():
    detector = DriftDetector(gain_threshold=2.0, consecutive=1)
    for _ in range(5):
        detector.check(gains_at(1.0), stage=1)
    # stage 2 trains the encoder: every gain triples, and more blocks are measured
    unfrozen = dict(gains_at(3.0), **{"encoder.stage2": 7.0})
    checks = [detector.check(unfrozen, stage=2) for _ in range(6)]
    assert [check.relative_gain for check in checks[:3]] == [None] * 3
    assert all(check.relative_gain == pytest.approx(1.0) and not check.alert for check in checks[3:])


def test_resume_keeps_the_history_and_rearms_the_warning():
    first = DriftDetector(gain_threshold=2.0, drift_threshold=100.0, consecutive=3, rewarn_every=1000)
    levels = [1.0] * 3 + [3.0] * 6
    assert sum(first.check(gains_at(level)).alert for level in levels) == 1  # warned once, streak goes on
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = DriftDetector(gain_threshold=2.0, drift_threshold=100.0, consecutive=3, rewarn_every=1000)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert list(second.history) == list(first.history) and second.baseline(BLOCKS[2]) == pytest.approx(21.0)
    resumed = [second.check(gains_at(3.0)).alert for _ in range(3)]
    continued = [first.check(gains_at(3.0)).alert for _ in range(3)]
    assert resumed == [False, False, True], "the problem outlived the interruption: it is reported again"
    assert continued == [False, False, False]


def hooks_left(model):
    return [name for name, module in model.named_modules()
            if module._backward_hooks or module._backward_pre_hooks or module._forward_hooks
            or module._forward_pre_hooks]


@pytest.fixture(scope="module")
def small_model():
    from models import build_model
    from models.config import ModelConfig

    torch.manual_seed(0)
    # top-3: every expert gets a gradient; stride 4: all 4 encoder levels in the FPN (no detail refinement)
    return build_model(ModelConfig(backbone="test_convnext", pretrained=False, num_experts=3, top_k=3,
                                   decoder_channels=16, min_feature_stride=4))


def test_real_backward_gives_a_gain_per_block_and_leaves_no_hook(small_model):
    blocks = find_blocks(small_model)
    assert len(blocks) == 4 + 4 + 1 + 3 + 1  # encoder stages, FPN smooth + fuse, experts, head refine
    assert hooks_left(small_model) == []
    probe = GainProbe(blocks)
    images = torch.randn(1, 3, 48, 48, requires_grad=True)  # so the first stage's input has a gradient too
    small_model(images).logits.square().mean().backward()
    names, gains = probe.remove()
    assert names == [name for name, _ in blocks]
    assert gains.shape == (len(blocks),) and torch.isfinite(gains).all() and (gains > 0).all()
    assert hooks_left(small_model) == []
    small_model.zero_grad(set_to_none=True)


def test_gain_is_the_input_over_output_gradient_ratio():
    block = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        block.weight.copy_(torch.diag(torch.tensor([2.0, 2.0, 2.0])))
    probe = GainProbe([("double", block)])
    inputs = torch.randn(4, 3, requires_grad=True)
    block(inputs).sum().backward()  # grad out = 1s, grad in = 2s
    assert probe.remove()[1].tolist() == pytest.approx([2.0])
    assert not block._backward_hooks


def fake_trainer(model, writer):
    return trainer_services(writer, unwrapped_model=model, global_step=0, stage=1)


def toy_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 1))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # block "0": its input has no gradient
def test_monitor_hooks_only_the_measured_update(caplog):
    """Drive the callbacks as the Trainer does: 9 updates of 2 micro-batches, measuring every 3rd."""
    model = toy_model()
    assert [name for name, _ in find_blocks(model)] == ["0", "2", "4"]  # children holding parameters
    writer = RecordingWriter()
    monitor = GradientDriftMonitor(interval=3, gain_threshold=1e-3, consecutive=2, grad_clip=1.0, baseline_checks=1)
    trainer = fake_trainer(model, writer)
    attached_during = []
    monitor.on_epoch_start(trainer)
    with caplog.at_level(logging.WARNING, logger="engine.monitors.gradient_drift"):
        for step in range(1, 10):
            for _ in range(2):  # micro-batches of one accumulation window
                attached_during.append(bool(hooks_left(model)))
                model(torch.randn(2, 4)).square().mean().backward()
            monitor.on_optimizer_step(trainer, StepOutput(torch.tensor(1.0), 1e-3, torch.tensor(0.5), step, step, 9))
            model.zero_grad(set_to_none=True)
    monitor.on_epoch_end(trainer, {})
    assert attached_during == ([False] * 4 + [True] * 2) * 3
    assert hooks_left(model) == []
    assert [step for step, _ in writer.scalars["gradient_monitor/mean_gain"]] == [3, 6, 9]
    assert "gradient_monitor/grad_norm" not in writer.scalars  # the grad-norm monitor's (test_monitor_grad_norm.py)
    # check 1 measures the baseline; the relative gain and the decisions start with check 2
    for tag in ("relative_gain", "relative_gain_ma", "relative_gain_drift", "gain_threshold", "flagged", "alert"):
        assert [step for step, _ in writer.scalars[f"gradient_monitor/{tag}"]] == [6, 9], tag
    # the decisions are recorded as made: both checks above the 1e-3 bound, the second alerts
    assert writer.scalars["gradient_monitor/gain_threshold"] == [(6, 1e-3), (9, 1e-3)]
    assert writer.scalars["gradient_monitor/flagged"] == [(6, 1.0), (9, 1.0)]
    assert writer.scalars["gradient_monitor/alert"] == [(6, 0.0), (9, 1.0)]
    assert all(math.isfinite(value) and value > 0 for _, value in writer.scalars["gradient_monitor/relative_gain"])
    drift = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Gradient drift")]
    assert len(drift) == 1 and drift[0].startswith("Gradient drift at step 9")
    assert "LR 0.001" in drift[0] and "halve the LR" in drift[0] and "1 -> 0.7" in drift[0]
