"""The field table's saved rows, the order of its runs and their summary (a helper of ``field_table.py``).

A row is one finished training run: one configuration at one seed and one LR at one budget, with
its validation and test scores and wall time. Rows are written to a JSON file as each run finishes
(atomically), so an interrupted table resumes where it stopped; a row's key is its configuration,
seed, LR and budget, so rows of another budget (``--quick``) never stand in for the real ones.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

METRICS = (("Smeasure", "S-measure"), ("wFmeasure", "weighted F"), ("meanEm", "mean E"), ("MAE", "MAE"),
           ("wall_s", "wall s"), ("cpu_s", "CPU s"))
TIMES = ("wall_s", "cpu_s")  # of the training process, saved in the row itself (cpu_s: rows saved since it was added)
SELECT_BY = "Smeasure"  # the LR sweep keeps the LR of the best validation S-measure
MAX_EXTENSIONS = 2  # how far a sweep goes past an end whose LR scored best (x2 or /2 each time)
PARTS = {"test": "plain forward pass", "test_flip": "`eval --tta flip`: the mean of the image and its mirror"}


def row_key(config: str, seed: int, lr: Optional[float], budget: str) -> str:
    return f"{config}|seed={seed}|lr={'default' if lr is None else f'{lr:g}'}|{budget}"


class ResultStore:
    """The rows of one results file; ``add`` rewrites the file at once (temp file + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: List[Dict] = json.loads(self.path.read_text())["rows"] if self.path.is_file() else []

    def find(self, key: str) -> Optional[Dict]:
        return next((row for row in self.rows if row["key"] == key), None)

    def add(self, row: Dict) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps({"rows": self.rows}, indent=1) + "\n")
        os.replace(partial, self.path)

    def update(self, key: str, **fields) -> None:
        """Add ``fields`` to the saved row ``key`` (e.g. scores computed later from its kept run)."""
        self.find(key).update(fields)
        self._write()

    def of(self, config: str, budget: str) -> List[Dict]:
        return [row for row in self.rows if row["config"] == config and row["budget"] == budget]


def best_lr(rows: Sequence[Dict], seed: int) -> Optional[float]:
    """The LR whose run at ``seed`` scored the best validation S-measure (None: no swept run yet)."""
    swept = [row for row in rows if row["seed"] == seed and row["lr"] is not None]
    return max(swept, key=lambda row: row["val"][SELECT_BY])["lr"] if swept else None


def beyond_the_edge(rows: Sequence[Dict], seed: int) -> Optional[float]:
    """The next LR of a sweep whose best validation LR is at one of its ends: half the smallest or
    twice the largest swept LR (None when the best lies inside, or fewer than 2 LRs were swept)."""
    swept = sorted({row["lr"] for row in rows if row["seed"] == seed and row["lr"] is not None})
    best = best_lr(rows, seed)
    if len(swept) < 2 or swept[0] < best < swept[-1]:
        return None
    return swept[0] / 2 if best == swept[0] else swept[-1] * 2


def spread(values: Sequence[float]):
    """(mean, sample standard deviation); the deviation is None with fewer than two values."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def summarise(rows: Sequence[Dict], swept: bool, first_seed: int, part: str = "test") -> Dict:
    """Mean and spread over seeds of one configuration's ``part`` scores (a key of ``PARTS``), at its
    kept LR (always chosen on the plain validation scores); rows without ``part`` are left out."""
    lr = best_lr(rows, first_seed) if swept else None
    kept = [row for row in rows if row["lr"] == lr and part in row]
    summary = {"lr": lr, "seeds": sorted(row["seed"] for row in kept),
               "swept_lrs": sorted(row["lr"] for row in rows if row["seed"] == first_seed and row["lr"] is not None)}
    for key, _ in METRICS:
        if key in TIMES:  # a row marked "timing_disturbed" (another job shared the machine) keeps only its scores
            values = [row[key] for row in kept if key in row and not row.get("timing_disturbed")]
        else:
            values = [row[part][key] for row in kept]
        summary[key] = spread(values) if values else (None, None)
    return summary


def _number(value: Optional[float], key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if key in TIMES else f"{value:.3f}"


def markdown(summaries: Dict[str, Dict], notes: Dict[str, str], budget: str, part: str = "test") -> str:
    """One markdown table: per configuration the kept LR, the seeds, and mean and std of each score."""
    header = ["configuration", "LR (kept)", "seeds"]
    for _, label in METRICS:
        header += [f"{label} mean", f"{label} std"]
    lines = [f"Test scores on the held-out 20 %, {PARTS[part]} (budget {budget}); mean and sample std over seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in summaries.items():
        if not summary["seeds"]:
            cells = [name, "-", "not run"] + ["-"] * (2 * len(METRICS))
        else:
            lr = "defaults" if summary["lr"] is None else f"{summary['lr']:g}"
            swept = summary["swept_lrs"]
            if len(swept) > 1:
                lr += f" (of {', '.join(f'{value:g}' for value in swept)})"
            cells = [name, lr, str(len(summary["seeds"]))]
            for key, _ in METRICS:
                mean, std = summary[key]
                cells += [_number(mean, key), _number(std, key)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- `{name}`: {note}" for name, note in notes.items()]
    return "\n".join(lines)


def run_config(config, seeds: Sequence[int], lrs: Sequence[float], store: ResultStore, budget_id: str,
               run: Callable[..., Dict]) -> Dict:
    """Every run of one configuration not yet in ``store``, each saved as it finishes.

    A peer runs each LR at ``seeds[0]``, then the other seeds at the LR of the best validation
    S-measure; a recipe row runs each seed at the recipe's own LRs. When the best LR is the
    smallest or the largest swept, the sweep goes on past that end (half or twice it), at most
    ``MAX_EXTENSIONS`` times, so no peer is left at an LR the sweep cut short.
    """
    done = {"ran": [], "skipped": []}

    def one(seed: int, lr: Optional[float]) -> None:
        key = row_key(config.name, seed, lr, budget_id)
        if store.find(key) is not None:
            done["skipped"].append(key)
            return
        print(f"field table: running {key}", file=sys.stderr, flush=True)
        store.add(run(config, seed, lr))
        done["ran"].append(key)

    if config.swept:
        for lr in lrs:
            one(seeds[0], lr)
        for _ in range(MAX_EXTENSIONS):
            extra = beyond_the_edge(store.of(config.name, budget_id), seeds[0])
            if extra is None:
                break
            one(seeds[0], extra)
        kept = best_lr(store.of(config.name, budget_id), seeds[0])
        for seed in seeds[1:]:
            one(seed, kept)
    else:
        for seed in seeds:
            one(seed, None)
    return done
