"""Benchmark: time per optimizer step of the Trainer, monitors off vs all on, vs a bare loop.

Same model, same in-memory data, same AdamW and accumulation, same process. Prints one JSON line:
``monitors_ratio`` = all monitors + weight EMA on / all off (goal <= 1.03) and
``trainer_ratio`` = Trainer with everything on / bare PyTorch loop (goal <= 1.05). The Trainer is
driven only through its public API (``fit``, ``add_callback``).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from engine.build import build_trainer  # noqa: E402
from engine.callbacks import Callback, Order  # noqa: E402
from engine.config import build_config  # noqa: E402

from benchmarks.rendered_scenes import RenderedScenes  # noqa: E402

SETTINGS = dict(backbone="edgenext_xx_small", pretrained=False, num_experts=4, decoder_channels=32, img_size=128,
                synthetic_train_size=64, synthetic_val_size=8, batch_size=8, accumulation_steps=2, epochs=100,
                stage1_epochs=0, num_workers=0, log_interval=20, keep_checkpoints=0)
MONITORS_OFF = dict(loss_ema=False, grad_monitor_interval=0, expert_monitor=False, eval_epochs="none", use_ema=False)
MONITORS_ON = dict(loss_ema=True, grad_monitor_interval=50, expert_monitor=True, eval_epochs="2+", use_ema=True)


class StepTimer(Callback):
    """Wall time from the start of an epoch's loop to its last optimizer step, per step (runs after
    every other callback, so their per-step work is inside the window; validation is not)."""

    name = "step_timer"
    order = Order.CHECKPOINT + 1

    def __init__(self):
        self.started, self.first_step, self.seconds_per_step = 0.0, 0, 0.0

    def on_epoch_start(self, trainer) -> None:
        self.started, self.first_step = time.perf_counter(), trainer.global_step

    def on_optimizer_step(self, trainer, step) -> None:
        if step.step_in_epoch == step.steps_in_epoch:
            self.seconds_per_step = (time.perf_counter() - self.started) / (step.step - self.first_step)


class TrainerEpochs:
    """The real Trainer through its public API: ``fit()`` one more epoch per call."""

    def __init__(self, overrides: dict, folder: str):
        self.trainer = build_trainer(build_config({}, dict(SETTINGS, checkpoint_dir=folder, **overrides)))
        self.trainer.data.train_dataset = RenderedScenes(self.trainer.data.train_dataset)
        self.timer = StepTimer()
        self.trainer.add_callback(self.timer)

    def seconds_per_step(self) -> float:
        self.trainer.config.epochs = self.trainer.epoch + 1
        self.trainer.fit()
        return self.timer.seconds_per_step


class BareEpochs:
    """A plain PyTorch loop over the same model, data, optimizer, accumulation and clipping."""

    def __init__(self, folder: str):
        trainer = build_trainer(build_config({}, dict(SETTINGS, checkpoint_dir=folder, **MONITORS_OFF)))
        self.model, self.criterion, self.optimizer = trainer.model, trainer.criterion, trainer.optimizer
        self.data, self.dataset, self.device = trainer.data, RenderedScenes(trainer.data.train_dataset), trainer.device
        self.model.train()
        self.epoch = 0

    def seconds_per_step(self) -> float:
        loader = self.data.loader(self.dataset, SETTINGS["batch_size"], self.epoch, shuffle=True, start_sample=0)
        start, updates = time.perf_counter(), 0
        for index, batch in enumerate(loader):
            images = batch["image"].to(self.device, non_blocking=True)
            masks = batch["mask"].to(self.device, non_blocking=True)
            loss = self.criterion(self.model(images), masks)["loss"] / SETTINGS["accumulation_steps"]
            loss.backward()
            if (index + 1) % SETTINGS["accumulation_steps"] == 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.epoch += 1
        return (time.perf_counter() - start) / updates


def main(rounds: int = 10) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        runners = {"bare": BareEpochs(folder + "/bare"), "off": TrainerEpochs(MONITORS_OFF, folder + "/off"),
                   "on": TrainerEpochs(MONITORS_ON, folder + "/on")}
        for runner in runners.values():
            runner.seconds_per_step()  # warm-up epoch, not timed
        # One epoch of each variant per round, in a rotating order: this machine's speed drifts by
        # several per cent over a minute, and interleaving lets the drift hit every variant alike.
        timings = {name: [] for name in runners}
        names = list(runners)
        for round_index in range(rounds):
            for name in names[round_index % 3:] + names[: round_index % 3]:
                timings[name].append(runners[name].seconds_per_step())
    medians = {name: statistics.median(values) for name, values in timings.items()}
    result = {
        "benchmark": "step_overhead", "device": str(runners["bare"].device), "threads": torch.get_num_threads(),
        "model": f"{SETTINGS['backbone']} + MoE, {SETTINGS['img_size']}px, batch {SETTINGS['batch_size']} "
                 f"x accumulation {SETTINGS['accumulation_steps']}",
        "rounds": rounds,
        "bare_loop_ms": round(medians["bare"] * 1e3, 1), "trainer_monitors_off_ms": round(medians["off"] * 1e3, 1),
        "trainer_all_on_ms": round(medians["on"] * 1e3, 1),
        "monitors_ratio": round(medians["on"] / medians["off"], 3),
        "trainer_ratio": round(medians["on"] / medians["bare"], 3),
        "goals": "monitors_ratio <= 1.03, trainer_ratio <= 1.05",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
