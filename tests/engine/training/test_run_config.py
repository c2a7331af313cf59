"""A resume takes the checkpoint's settings; a --config file that changes how the run trains is
called out at WARNING level, while flags typed on the command line are the user's intent."""
import logging

import pytest

from engine.training.run_config import resolve_run_config
from tests.cli.in_process import run_cli


def resolve(tiny_run_dir, tmp_path, yaml_values, flags=None):
    given = {"resume_from": str(tiny_run_dir / "last.pth"), "checkpoint_dir": str(tmp_path / "next")}
    return resolve_run_config(yaml_values, {**given, **(flags or {})})


def test_a_yaml_that_resets_the_schedule_batch_or_ema_warns_with_the_flags_that_keep_them(tiny_run_dir, tmp_path,
                                                                                          caplog):
    with caplog.at_level(logging.WARNING, logger="engine.training.run_config"):
        config, _ = resolve(tiny_run_dir, tmp_path, {"epochs": 120, "use_ema": False, "batch_size": 8, "lr": 0.001})
    [record] = caplog.records
    message = record.getMessage()
    for change in ("epochs: 2 -> 120", "use-ema: True -> False", "batch-size: 4 -> 8"):
        assert change in message
    assert "lr:" not in message  # the YAML gives the run's own value: nothing changes
    assert "--epochs 2" in message and "--use-ema" in message and "--batch-size 4" in message
    assert config.epochs == 120  # a warning, not a refusal: the YAML may be meant


@pytest.mark.parametrize("yaml_values, flags", [({}, {"epochs": 5}), ({"epochs": 120}, {"epochs": 5}),
                                                # (the run is complete: a resume needs a larger --epochs)
                                                ({"stage1_epochs": 1, "log_interval": 7}, {"epochs": 3})])
def test_typed_flags_and_unchanged_or_harmless_yaml_keys_do_not_warn(yaml_values, flags, tiny_run_dir, tmp_path,
                                                                     caplog):
    with caplog.at_level(logging.WARNING, logger="engine.training.run_config"):
        resolve(tiny_run_dir, tmp_path, yaml_values, flags)
    assert not caplog.records


def test_a_phase_config_reused_on_a_resume_warns_in_the_dry_run(tiny_run_dir, tmp_path):
    config = tmp_path / "phase1.yaml"
    config.write_text("epochs: 120\nstage2-lr: 0.0002\nuse-ema: false\n")
    result = run_cli("train", "--config", config, "--resume-from", tiny_run_dir / "last.pth",
                     "--checkpoint-dir", tmp_path / "next", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "WARNING --config changes the run" in line]
    assert len(warnings) == 1 and "drop --config" in warnings[0]
