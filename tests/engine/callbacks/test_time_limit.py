"""--time-limit stops cleanly with a checkpoint, and the run resumes to the end."""
from engine.build import build_trainer
from engine.checkpoint import load_checkpoint
from engine.checkpoint.format import progress
from engine.config import parse_duration


def test_parse_duration():
    assert parse_duration("11.5h") == 11.5 * 3600
    assert parse_duration("90m") == 5400 and parse_duration("3600s") == 3600 and parse_duration("42") == 42


def test_time_limit_stops_with_checkpoint_then_resume_completes(tiny_config, tmp_path):
    trainer = build_trainer(tiny_config(epochs=3, time_limit="0.5s"))
    trainer.fit()
    assert trainer.should_stop and "time limit" in trainer.stop_reason
    saved = load_checkpoint(tmp_path / "ckpt" / "last.pth")
    assert progress(saved)["global_step"] == trainer.global_step < 9
    resumed = build_trainer(tiny_config(epochs=3, resume_from="auto"))
    resumed.fit()
    assert resumed.epoch == 3 and resumed.global_step == 9
