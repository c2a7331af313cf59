"""A real short run writes every documented TensorBoard tag and a complete metrics.jsonl."""
import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.build import build_trainer

EXPECTED_TAGS = [
    "train/step_loss", "train/loss_ema", "train/lr", "val/iou", "val/dice", "val/mae", "val/loss", "val/iou_ema",
    "gradient_monitor/mean_gain", "gradient_monitor/relative_gain", "gradient_monitor/relative_gain_ma",
    "gradient_monitor/relative_gain_drift",
    "gradient_monitor/grad_norm", "gradient_monitor/gain_threshold", "gradient_monitor/flagged",
    "gradient_monitor/alert", "evaluation/improvement_rate", "evaluation/train_val_gap",
    "evaluation/plateau_detected", "moe/expert_0", "moe/expert_1", "moe/expert_2",
]


def test_short_run_writes_every_tag(tiny_config, tmp_path):
    # epochs 2-3 (stage 2): 6 checks, the first 3 measure the baselines, the relative gain follows
    trainer = build_trainer(tiny_config(epochs=3, use_ema=True, grad_monitor_interval=1, log_interval=1))
    trainer.fit()
    folder = tmp_path / "ckpt"
    events = EventAccumulator(str(folder / "runs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    missing = [tag for tag in EXPECTED_TAGS if tag not in tags]
    assert not missing, missing
    steps = [event.step for event in events.Scalars("train/step_loss")]
    assert steps == list(range(1, trainer.global_step + 1))  # one point per optimizer step
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert "health" in rows[-1] and "expert_usage" in rows[-1]
