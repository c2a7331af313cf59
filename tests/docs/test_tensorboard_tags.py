"""A real short run writes exactly the TensorBoard tags the monitoring guide lists (the README links
there), and a complete metrics.jsonl."""
import json
import re
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.build import build_trainer

ROOT = Path(__file__).resolve().parents[2]
TERMS = ("structure", "balance", "side_supervision", "deep_supervision")


def documented_tags(text: str) -> set:
    """Backticked tags of a markdown section, ``<i>`` / ``<term>`` expanded, short names
    (``relative_gain`` after ``gradient_monitor/...``) completed with their row's prefix and
    ``(+ `_ema`)`` rows doubled."""
    tags = set()
    for line in text.splitlines():
        names = re.findall(r"`([a-z_<>]+/[a-z_<>0-9]+|[a-z_<>]+)`", line.split("|")[1] if line.startswith("|") else line)
        prefix = None
        for name in names:
            if "/" in name:
                prefix = name.split("/")[0]
            elif prefix is None or name.startswith("_") or name.startswith("<"):
                continue
            else:
                name = f"{prefix}/{name}"
            tags.add(name)
            if "(+ `_ema`)" in line:
                tags.add(f"{name}_ema")
    expanded = set()
    for tag in tags:
        for term in (TERMS if "<term>" in tag else ("",)):
            expanded.add(tag.replace("<term>", term).replace("<i>", "0"))
    return expanded


def section(path: Path, start: str, end: str) -> str:
    text = path.read_text()
    return text[text.index(start):text.index(end, text.index(start))]


def test_short_run_writes_every_documented_tag_and_no_other(tiny_config, tmp_path):
    # epochs 2-3 (stage 2): 6 checks, the first 3 measure the baselines, the relative gain follows
    trainer = build_trainer(tiny_config(epochs=3, use_ema=True, grad_monitor_interval=1, log_interval=1,
                                        best_metric="sm", loss_normalization="ema", deep_supervision_weight=0.1))
    trainer.fit()
    folder = tmp_path / "ckpt"
    events = EventAccumulator(str(folder / "runs"))
    events.Reload()
    written = set(events.Tags()["scalars"]) | set(events.Tags()["images"])
    written = {re.sub(r"moe/expert_\d+", "moe/expert_0", tag) for tag in written}
    guide = documented_tags(section(ROOT / "guides" / "MONITORING_GUIDE.md", "## Every TensorBoard tag", "`python"))
    assert guide == written, (sorted(written - guide), sorted(guide - written))
    assert "guides/MONITORING_GUIDE.md#every-tensorboard-tag" in (ROOT / "README.md").read_text()
    steps = [event.step for event in events.Scalars("train/step_loss")]
    assert steps == list(range(1, trainer.global_step + 1))  # one point per optimizer step
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert "health" in rows[-1] and "expert_usage" in rows[-1]
