"""Per-term loss tags (loss/<term>_raw, loss/<term>_normalized) from real runs, and the loss
normaliser across a real mid-epoch save and resume."""
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.build import build_trainer
from engine.checkpoint import load_checkpoint
from tests.engine.training.test_resume import StopAtStep

TERMS = ("structure", "balance", "side_supervision")  # the tiny config: side supervision on (0.5), no deep


def scalars(folder):
    """tag -> {step: value} of every scalar under ``folder/runs`` (resumed sessions' files included)."""
    events = EventAccumulator(str(folder / "runs"))
    events.Reload()
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def assert_raw_terms_add_up_to_the_step_loss(tags, config):
    """The criterion's total is structure + w_moe * balance + w_side * side; the window means of the
    terms must recombine into the logged train/step_loss at every step."""
    for step, loss in tags["train/step_loss"].items():
        recombined = (tags["loss/structure_raw"][step] + config.moe_loss_weight * tags["loss/balance_raw"][step]
                      + config.side_supervision_weight * tags["loss/side_supervision_raw"][step])
        assert recombined == pytest.approx(loss, rel=1e-5), step


def test_ema_mode_logs_raw_and_normalized_terms_per_step(tiny_config, tmp_path):
    config = tiny_config(epochs=1, stage1_epochs=1, batch_size=2, loss_normalization="ema",
                         loss_normalization_beta=0.5, log_interval=4, grad_monitor_interval=0)  # 6 steps
    trainer = build_trainer(config)
    trainer.fit()
    tags = scalars(tmp_path / "ckpt")
    steps = list(range(1, trainer.global_step + 1))
    for term in TERMS:
        raw, normalized = tags[f"loss/{term}_raw"], tags[f"loss/{term}_normalized"]
        assert sorted(raw) == sorted(normalized) == steps, term  # every step, buffered across log intervals
        # one normaliser update per step here (accumulation 1): L_t / bias-corrected EMA of L_1..L_t,
        # computed by pandas from the raw series at the configured beta (alpha = 1 - 0.5)
        series = pd.Series([raw[step] for step in steps])
        expected = series / series.ewm(alpha=0.5, adjust=True).mean()
        assert [normalized[step] for step in steps] == pytest.approx(expected.tolist(), rel=1e-5), term
        assert normalized[1] == pytest.approx(1.0, abs=1e-6)
    assert trainer.criterion.normalizer.beta == 0.5
    assert_raw_terms_add_up_to_the_step_loss(tags, config)


def test_none_mode_logs_raw_terms_only(tiny_config, tmp_path):
    config = tiny_config(epochs=1, stage1_epochs=1, grad_monitor_interval=0, accumulation_steps=2)
    trainer = build_trainer(config)
    trainer.fit()
    tags = scalars(tmp_path / "ckpt")
    loss_tags = sorted(tag for tag in tags if tag.startswith("loss/"))
    assert loss_tags == sorted(f"loss/{term}_raw" for term in TERMS)
    assert sorted(tags["loss/balance_raw"]) == list(range(1, trainer.global_step + 1))
    assert_raw_terms_add_up_to_the_step_loss(tags, config)  # window means under accumulation 2 (windows 2 + 1)


def test_normalizer_is_restored_from_a_mid_epoch_checkpoint(tiny_config, tmp_path):
    settings = dict(epochs=3, loss_normalization="ema", loss_normalization_beta=0.8, accumulation_steps=2,
                    grad_monitor_interval=0, log_interval=1)
    straight = build_trainer(tiny_config(checkpoint_dir=str(tmp_path / "straight"), **settings))
    straight.fit()  # 2 windows per epoch (2 + 1 micro-batches): 6 steps
    first = build_trainer(tiny_config(**settings))
    first.add_callback(StopAtStep(3))  # epoch 2, after its first window
    first.fit()
    saved = load_checkpoint(tmp_path / "ckpt" / "last.pth")["trainer"]
    assert saved["progress"]["batch_in_epoch"] == 2 and saved["progress"]["global_step"] == 3
    assert torch.all(saved["criterion"]["normalizer.ema_weight"] > 0)  # 6 criterion calls folded in
    resumed = build_trainer(tiny_config(resume_from="auto", **settings))
    for key in ("ema", "ema_weight"):
        assert torch.equal(getattr(resumed.criterion.normalizer, key), saved["criterion"][f"normalizer.{key}"]), key
    resumed.fit()
    for key in ("ema", "ema_weight"):  # the resumed run ends where the uninterrupted one does
        assert torch.equal(getattr(resumed.criterion.normalizer, key), getattr(straight.criterion.normalizer, key))
    expected, continued = scalars(tmp_path / "straight"), scalars(tmp_path / "ckpt")
    for term in TERMS:
        tag = f"loss/{term}_normalized"
        assert sorted(continued[tag]) == list(range(1, 7)), tag
        # steps 4-6 come from the resumed session; step 4's window is one micro-batch, so a fresh
        # normaliser would log exactly 1.0 there: the straight run's value is far enough from it
        assert abs(expected[tag][4] - 1.0) > 1e-5, tag
        assert [continued[tag][step] for step in range(1, 7)] == pytest.approx(
            [expected[tag][step] for step in range(1, 7)], rel=1e-6), tag
