"""The health report's LR advice, applied as written on a real resume, moves the LR the way it says."""
import json
import re

import pytest
import torch

from engine.monitors.health_rules import schedule_context
from engine.training.stages import PlanState, StagePlan
from tests.cli.in_process import run_main
from tests.conftest import tiny_flags

TINY = tiny_flags(synthetic_train_size=8, synthetic_val_size=2, epochs=8, stage1_epochs=None, min_lr=1e-5,
                  progress="off")
pytestmark = pytest.mark.timeout(300)


def rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage1_epochs, stop_after, stage", [(6, 2, 1), (1, 3, 2)])
def test_lower_lr_advice_lowers_the_lr_when_followed(stage1_epochs, stop_after, stage, tmp_path):
    folder = tmp_path / "run"
    flags = [*TINY, "--stage1-epochs", stage1_epochs, "--checkpoint-dir", folder]
    assert run_main("train", *flags, "--stop-after-epochs", stop_after) == 0
    before = rows(folder)[-1]
    checkpoint = torch.load(folder / "last.pth", weights_only=True)
    from engine.config import TrainConfig

    config = TrainConfig(**checkpoint["config"])
    plan = StagePlan(config, 8, PlanState.from_state_dict(checkpoint["trainer"]["plan"]))
    context = schedule_context(plan, before["epoch"] - 1, config.warmup_epochs)
    assert context.stage == stage and context.lr == pytest.approx(before["lr"])
    advice = context.lower_lr_advice()
    flag, value = re.search(r"resume with (--[\w-]+) (\S+)", advice).groups()
    assert flag == ("--lr" if stage == 1 else "--stage2-lr")

    assert run_main("train", "--checkpoint-dir", folder, "--resume-from", "auto", flag, value,
                    "--stop-after-epochs", 1, "--progress", "off") == 0
    after = rows(folder)[-1]
    assert after["epoch"] == before["epoch"] + 1 and after["stage"] == stage
    assert after["lr"] <= float(value) * 1.0001 < before["lr"], (advice, before["lr"], after["lr"])
