#!/usr/bin/env python
"""Command-line entry point: ``python train_ultimate.py <train|synth|eval|predict|export|report> [flags]``.

The only place that parses arguments. Flags override the YAML file, which overrides the defaults
of ``engine.config.TrainConfig``; every user error ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version ping on offline Kaggle / CI

from engine.config import (AMP_MODES, BEST_METRICS, CACHE_MODES, DEVICES, PROGRESS_MODES, SCHEDULERS,  # noqa: E402
                           TrainConfig)

DEFAULTS = TrainConfig()
BOOL = "bool"

# (flag, type or BOOL, help). Help texts state the default, taken from TrainConfig.
TRAIN_FLAGS: Dict[str, List[tuple]] = {
    "data": [
        ("dataset-path", str, "COD10K-v3 root (Train/Image + Train/GT_Object) or a folder with Imgs+GT / "
                              "Image+Mask; omitted: the built-in synthetic camouflage set"),
        ("include-noncam", BOOL, "also train on COD10K NonCAM images (empty masks); standard protocol is CAM-only"),
        ("skip-bad-samples", BOOL, "skip unreadable or truncated images/masks and masks with width and height "
                                   "swapped (reported) instead of stopping"),
        ("skip-unpaired", BOOL, "use only the complete image/mask pairs (the count left out is reported) instead "
                                "of stopping at images without masks or masks without images"),
        ("val-fraction", float, "fraction of the training images held out (seeded) for validation; "
                                "0 validates on the Test split instead"),
        ("img-size", int, "training/validation image side in pixels"),
        ("num-workers", int, "DataLoader worker processes per rank (default: the CPU cores / the number of "
                             "torchrun ranks, at most 4; a larger number warns when all ranks' workers "
                             "outnumber the cores)"),
        ("persistent-workers", BOOL, "keep workers alive between epochs (no start-up cost per epoch; each "
                                     "keeps its own copy of the dataset)"),
        ("cache", CACHE_MODES, "resize cache for training images (decoded and shrunk once to "
                       "4/3 x --img-size; memory needs ~1.4 MB RAM per 4:3 image at 384 px; disk is reused "
                       "across runs and rebuilt when a file changes)"),
        ("cache-dir", str, "folder of the disk cache (default: <checkpoint-dir>/resize-cache)"),
        ("synthetic-train-size", int, "synthetic scenes per training epoch (fresh scenes every epoch)"),
        ("synthetic-val-size", int, "fixed synthetic validation scenes"),
        ("synthetic-difficulty", float, "how close object and background textures are (smaller = harder)"),
    ],
    "model": [
        ("backbone", str, "timm encoder name (created with features_only=True)"),
        ("num-experts", int, "experts in the MoE decoder"),
        ("top-k", int, "experts each image is routed to (default: 3, or --num-experts when that is smaller)"),
        ("decoder-channels", int, "width of the FPN fusion and of every expert"),
        ("min-feature-stride", int, "finest encoder stride of the FPN and the experts: 4 leaves the stride-2 "
                                    "level of EfficientNet/MobileNet/ResNet-style backbones to the detail "
                                    "refinement (4x cheaper than fusing it)"),
        ("detail-channels", int, "width of the refinement that mixes the stride-2 encoder level into the "
                                 "decoder output, U-Net style (0: off; backbones without such a level skip it)"),
        ("router-noise", float, "std of the router's exploration noise while training"),
        ("pretrained", BOOL, "load pretrained encoder weights (default: on for real datasets, off for synthetic)"),
        ("pretrained-path", str, "local pretrained weights file, for offline machines"),
        ("moe-loss-weight", float, "weight of the MoE load-balancing loss"),
        ("deep-supervision-weight", float, "weight of the per-expert structure losses (0: off)"),
        ("side-supervision-weight", float, "weight of the structure losses of each decoder level's side output "
                                           "(multi-level deep supervision; 0: off)"),
        ("loss-normalization", str, "loss combination: none | ema (each term divided by its own bias-corrected EMA); "
                                    "TensorBoard gets loss/<term>_raw, and loss/<term>_normalized with ema"),
        ("loss-normalization-beta", float, "EMA decay of --loss-normalization ema; window about 1/(1-beta) "
                                         "micro-batches (one EMA update per forward pass)"),
    ],
    "optimisation and stages": [
        ("batch-size", int, "stage-1 batch size"),
        ("stage2-batch-size", int, "stage-2 batch size (default: --batch-size)"),
        ("accumulation-steps", int, "micro-batches per optimizer step"),
        ("epochs", int, "total epochs of the plan"),
        ("stage1-epochs", int, "epochs with the encoder frozen"),
        ("skip-stage1", BOOL, "start at stage 2 (encoder trainable)"),
        ("progressive-unfreeze", BOOL, "unfreeze encoder stages deepest-first in stage 2"),
        ("unfreeze-interval", int, "epochs between two unfrozen encoder stages"),
        ("lr", float, "stage-1 learning rate (the decoder trains at this x --decoder-lr-scale)"),
        ("stage2-lr", float, "stage-2 learning rate (encoder at this x --backbone-lr-scale, decoder at this x "
                             "--decoder-lr-scale)"),
        ("backbone-lr-scale", float, "encoder LR in stage 2 = --stage2-lr x this"),
        ("decoder-lr-scale", float, "decoder and head LR = the stage's LR x this, in both stages: a random "
                                    "decoder learns faster than a pretrained encoder (default: 4 when the encoder "
                                    "starts from pretrained weights, 1 otherwise)"),
        ("freeze-encoder-bn", BOOL, "the encoder's BatchNorm layers keep their pretrained running statistics "
                                    "(eval mode; their weights still train): small batches give noisy statistics, "
                                    "batch 1 none (default: on when the encoder starts from pretrained weights)"),
        ("weight-decay", float, "AdamW weight decay (not applied to norms and biases)"),
        ("grad-clip", float, "max total gradient norm (0: no clipping)"),
        ("max-bad-steps", int, "stop after this many non-finite (NaN/Inf) updates in a row"),
        ("scheduler", SCHEDULERS, "LR schedule"),
        ("min-lr", float, "LR at the end of the cosine decay"),
        ("warmup-epochs", float, "linear warmup at the start of each stage, in epochs"),
    ],
    "weight EMA": [
        ("use-ema", BOOL, "keep an EMA of the weights and validate it beside the base weights"),
        ("ema-decay", float, "EMA decay; window about 1/(1-decay) optimizer steps"),
        ("ema-warmup", BOOL, "ramp the decay up as min(decay, (1+step)/(10+step))"),
    ],
    "checkpoints, resume and time budget": [
        ("checkpoint-dir", str, "where checkpoints, metrics.jsonl, config.yaml and runs/ go"),
        ("resume-from", str, "checkpoint to resume from, or 'auto' for the newest usable one in --checkpoint-dir"),
        ("overwrite", BOOL, "let a new run (no --resume-from) replace the checkpoints already in --checkpoint-dir; "
                            "without it such a run is refused"),
        ("restart-schedule", BOOL, "when resuming: warm-restart the current stage's LR schedule at the resume "
                                   "epoch (warmup, then decay to --epochs) even if no schedule flag changed"),
        ("restart-epoch", BOOL, "when resuming a checkpoint saved mid-epoch: redo that epoch from its first batch "
                                "(needed when the training set changed since the save)"),
        ("stop-after-epochs", int, "end this invocation after N more epochs (the schedule still targets --epochs)"),
        ("time-limit", str, "stop cleanly with a checkpoint before this wall time, e.g. 11.5h, 90m, 3600s"),
        ("save-every-minutes", float, "also write last.pth mid-epoch at this period"),
        ("keep-checkpoints", int, "epoch_N.pth files kept (0: none)"),
        ("best-metric", BEST_METRICS, "what picks best_model.pth: validation IoU, S-measure (sm), MAE or weighted "
                                      "F (wfm); sm and wfm are scored by pysodmetrics at each mask's own size, as "
                                      "eval does (costs a little validation time, see the README)"),
        ("early-stop-patience", int, "stop cleanly (last.pth saved, exit code 0) after N epochs in a row without a "
                                     "better --best-metric score, judged as best_model.pth is (unset or 0: off)"),
    ],
    "monitors": [
        ("loss-ema", BOOL, "bias-corrected loss EMA in TensorBoard (train/loss_ema) and on the console line"),
        ("loss-ema-beta", float, "loss EMA decay; window about 1/(1-beta) optimizer steps"),
        ("grad-monitor-interval", int, "optimizer steps between gradient-gain measurements (0: drift monitor off)"),
        ("drift-window", int, "gain checks kept for the moving average and the drift reference"),
        ("drift-threshold", float, "rise of the relative gradient gain vs the oldest check in the window that flags "
                                   "a check (0.5 = +50 percent)"),
        ("gain-threshold", float, "bound on the relative gradient gain: each block's gain over its own early gains "
                                  "in the stage, geometric mean over the blocks (default: 2.0)"),
        ("drift-consecutive", int, "flagged checks in a row before a drift warning"),
        ("eval-epochs", str, "epochs with a post-epoch health report: 2+ (from epoch 2 on), 1,5,10, 3-8 or none"),
        ("auto-adjust-lr", BOOL, "halve the LR when the health report detects a plateau, never below --min-lr"),
        ("expert-monitor", BOOL, "per-expert routing share in TensorBoard (moe/expert_<i>) and metrics.jsonl; "
                                 "collapse warnings"),
    ],
    "runtime": [
        ("seed", int, "random seed (data order, augmentation, init); CPU runs are bitwise repeatable"),
        ("deterministic", BOOL, "ask cuDNN/PyTorch for deterministic kernels on GPU (slower)"),
        ("device", DEVICES, "where training runs (auto: a GPU when visible)"),
        ("amp", AMP_MODES, "mixed precision (auto: bf16 on Ampere+, fp16 on older GPUs, off on CPU)"),
        ("channels-last", BOOL, "channels-last memory format for model and inputs; kept off since on CUDA the "
                                      "decoder's GroupNorm runs only in NCHW (a layout copy around each norm), not yet "
                                      "measured on a GPU"),
        ("grad-checkpointing", BOOL, "recompute encoder stages and experts in backward: less memory (384 px on "
                                     "16 GB cards) for extra compute, same gradients"),
        ("compile", BOOL, "torch.compile the model (torch >= 2.6; the first steps of each stage compile, then run "
                          "faster; gradient-monitor steps run eagerly so its hooks see every block)"),
        ("log-interval", int, "optimizer steps between console log lines"),
        ("progress", PROGRESS_MODES, "progress display: bar (tqdm bars), log (plain lines every --log-interval "
                                     "steps, for saved logs such as Kaggle's), off (epoch summaries only); "
                                     "auto: bar on a terminal, else log; -q implies off"),
    ],
}


def _help_text(flag: str, text: str) -> str:
    """``text`` plus the default, once: not when the text already states it, and not for None
    (the text says what an unset value means)."""
    value = getattr(DEFAULTS, flag.replace("-", "_"))
    if value is None or "default" in text:
        return text
    return f"{text} (default: {'off' if value is False else 'on' if value is True else value})"


def _add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the MoE camouflage segmenter (two stages, EMA, resume)",
        usage="%(prog)s [--config FILE.yaml] [--dry-run] [options]",
        description="Train on COD10K-style data, or on the synthetic set when --dataset-path is omitted.")
    parser.add_argument("--config", help="YAML file of defaults (keys = flag names); flags override it")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the config and plan, then exit")
    for group_name, flags in TRAIN_FLAGS.items():
        group = parser.add_argument_group(group_name)
        for flag, kind, text in flags:
            help_text = _help_text(flag, text)
            if kind is BOOL:
                group.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
            elif isinstance(kind, tuple):  # a choice: unknown values are refused at parse time
                group.add_argument(f"--{flag}", choices=kind, default=None, help=help_text)
            else:
                group.add_argument(f"--{flag}", type=kind, default=None, help=help_text)


def _add_synth_parser(subparsers) -> None:
    parser = subparsers.add_parser("synth", help="write the synthetic camouflage set in the COD10K-v3 layout")
    parser.add_argument("--output", required=True,
                        help="new or empty folder to create (Train/Image, Train/GT_Object, Test/...)")
    parser.add_argument("--num-train", type=int, default=400, help="training scenes (default: 400)")
    parser.add_argument("--num-test", type=int, default=100, help="test scenes (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    parser.add_argument("--difficulty", type=float, default=0.15, help="texture shift, smaller is harder (default: 0.15)")


INFERENCE_CHOICES = {"tta": ("none", "flip", "flip-scale"), "device": ("auto", "cpu", "cuda")}


def _add_inference_flags(group) -> None:
    """Flags shared by ``eval`` and ``predict``."""
    group.add_argument("--tta", choices=INFERENCE_CHOICES["tta"], default="none",
                       help="test-time augmentation: average over a horizontal flip (flip) and also 0.75x/1.25x "
                            "sides (flip-scale) (default: none)")
    group.add_argument("--img-size", type=int, default=None,
                       help="inference side in pixels (default: the checkpoint's training --img-size)")
    group.add_argument("--device", choices=INFERENCE_CHOICES["device"], default="auto",
                       help="where the model runs (default: auto, a GPU when visible)")


def _add_eval_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="score a checkpoint and/or saved prediction maps on test sets: S-measure, E-measure, "
                     "weighted F, MAE, IoU, Dice",
        description="Score base and/or EMA weights of a checkpoint, and/or the saved prediction maps of any "
                    "method (--predictions), on one or more test sets with the standard COD metrics "
                    "(pysodmetrics), each prediction resized to its ground truth's original size; one table row "
                    "per weights or method. Images with an empty ground truth (COD10K NonCAM, only with "
                    "--include-noncam): IoU and Dice are 1 when nothing is predicted, else 0; weighted F is 0 "
                    "(pysodmetrics' convention).")
    inputs = parser.add_argument_group("inputs (--checkpoint, --predictions or both)")
    inputs.add_argument("--checkpoint", default=None, help="a .pth written by train (e.g. best_model.pth) or a "
                                                           ".safetensors written by export")
    inputs.add_argument("--predictions", nargs="+", default=[], metavar="DIR",
                        help="folders of saved maps, one per method (e.g. AINet/ with a sub-folder per test set "
                             "named like the set's folder, or the maps themselves for one set); maps pair with "
                             "ground truths by file stem and are resized to their size")
    inputs.add_argument("--dataset-path", nargs="+", required=True, metavar="DIR",
                        help="test sets: COD10K-v3 roots (their Test/ split), test packs (Imgs+GT, Image+Mask) "
                             "or folders written by synth")
    inputs.add_argument("--include-noncam", action="store_true",
                        help="also score COD10K NonCAM images (empty masks) (default: off, CAM only)")
    inputs.add_argument("--skip-unpaired", action="store_true",
                        help="score only the complete image/mask pairs (the count left out is reported) instead of "
                             "stopping at images without masks or masks without images (default: off)")
    inference = parser.add_argument_group("inference (with --checkpoint)")
    inference.add_argument("--weights", choices=("base", "ema", "both"), default=None,
                           help="weights to score (default: both when the checkpoint holds EMA weights, else base)")
    _add_inference_flags(inference)
    inference.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    inference.add_argument("--num-workers", type=int, default=None,
                           help="DataLoader workers reading the test images (default: 2 when the model runs on a "
                                "GPU, 0 on CPU, where workers compete with the forward pass: measured 1.56x vs "
                                "1.20x over the per-image loop on 2 cores)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", default=None, metavar="FILE.json",
                        help="write the scores and what produced them (checkpoint, weights, TTA, size, image counts, "
                             "version) as JSON, and the table as CSV next to it (default: only print the table)")
    output.add_argument("--per-image", default=None, metavar="FILE.csv",
                        help="write one row of scores per image, weights/method and test set (default: off)")
    output.add_argument("--save-maps", default=None, metavar="DIR",
                        help="write the checkpoint's scored maps as DIR/<weights>/<test set>/<stem>.png, the layout "
                             "--predictions reads (default: off)")


def _add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write one weight set as safetensors, or the model as ONNX / torch.export (.pt2)",
        description="safetensors: the chosen weights (optionally fp16) with the model config as metadata, loaded "
                    "by engine.api.load_model. onnx / pt2: a logits-only graph taking RGB in [0, 1] at any size, "
                    "(B, 3, H, W) -> (B, 1, H, W) logits, with dynamic batch, height and width.")
    parser.add_argument("--checkpoint", required=True, help="a .pth written by train (or an exported .safetensors)")
    parser.add_argument("--output", required=True, metavar="FILE", help="file to write (never the checkpoint)")
    parser.add_argument("--format", choices=("safetensors", "onnx", "pt2"), default="safetensors",
                        help="safetensors (weights + config), onnx or pt2 (torch.export) (default: safetensors)")
    parser.add_argument("--weights", choices=("best", "base", "ema"), default="best",
                        help="weights to export (default: best, the ones that scored best in training)")
    parser.add_argument("--half", action="store_true", help="store safetensors weights as fp16 (default: off)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="inference side stored with the model (default: the checkpoint's training --img-size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file (default: off)")


def _add_predict_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="write mask PNGs for an image or a folder, at the original size")
    inputs = parser.add_argument_group("inputs and outputs")
    inputs.add_argument("--checkpoint", required=True, help="a .pth written by train (e.g. best_model.pth)")
    inputs.add_argument("--input", required=True, metavar="IMAGE_OR_DIR",
                        help="an image or a folder of images (JPEG/PNG/BMP/WebP/TIFF; gray, RGBA, 16-bit)")
    inputs.add_argument("--output", required=True, metavar="DIR", help="folder for <name>.png masks")
    inputs.add_argument("--binary", action="store_true",
                        help="write 0/255 masks thresholded at 0.5 (default: probability as 0-255)")
    inputs.add_argument("--overwrite", action="store_true",
                        help="replace masks in --output that predict did not write, and allow --output to be the "
                             "images' own folder (an input image is never replaced) (default: off)")
    inputs.add_argument("--overlay", action="store_true",
                        help="also write overlays of the prediction on the image to DIR/overlay (default: off)")
    inference = parser.add_argument_group("inference")
    inference.add_argument("--weights", choices=("base", "ema"), default=None,
                           help="weights to use (default: the ones that scored best in training, base without EMA)")
    _add_inference_flags(inference)


def _add_report_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="draw PNG curves of a run (loss + loss EMA, val IoU base vs EMA, LR, gradient gain, experts)",
        description="Figures from metrics.jsonl and the TensorBoard scalars of a run, written to "
                    "<checkpoint-dir>/report/; figures whose data is missing are skipped with a note. "
                    "train runs this automatically at its end.")
    parser.add_argument("--checkpoint-dir", required=True, help="the run's --checkpoint-dir")


class OneLineParser(argparse.ArgumentParser):
    """argparse with the project's error style: one line naming the problem and where help is."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The full CLI parser (tests parse the commands of the README and guides with it)."""
    parser = OneLineParser(
        prog="train_ultimate.py",
        description="Camouflaged object segmentation: MoE decoder on a timm backbone, COD10K recipe.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors (also after the command)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="<command>", parser_class=OneLineParser)
    for add in (_add_train_parser, _add_synth_parser, _add_eval_parser, _add_predict_parser, _add_export_parser,
                _add_report_parser):
        add(subparsers)
    for command in subparsers.choices.values():  # -q after the command too; SUPPRESS keeps an earlier -q
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="only warnings and errors")
    return parser


def flag_values(args: argparse.Namespace) -> Dict[str, Any]:
    """The train flags given on the command line (None = not given)."""
    names = [flag.replace("-", "_") for flags in TRAIN_FLAGS.values() for flag, _, _ in flags]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_train(args: argparse.Namespace) -> int:
    from engine.build import build_trainer, describe_run, run_warnings, select_device
    from engine.checkpoint.resume import resolve_run_config
    from engine.config import load_yaml
    from engine.evaluation.report import report_after_training

    flags = flag_values(args)
    if args.quiet and flags.get("progress") is None:
        flags["progress"] = "off"
    config, notes = resolve_run_config(load_yaml(args.config) if args.config else {}, flags)
    log = logging.getLogger("train_ultimate")
    if args.dry_run:
        return dry_run(config, notes)
    for line in notes:
        log.info(line)
    select_device(config.device, config.amp, config.compile)  # an unusable GPU is refused before any file is written
    with run_lock(config.checkpoint_dir):
        trainer = build_trainer(config)
        for line in describe_run(trainer):
            log.info(line)
        for line in run_warnings(trainer):
            log.warning(line)
        from engine.distributed import shutdown

        try:
            trainer.fit()
        except BaseException:
            shutdown(trainer.distributed, failed=True)  # no barrier: the other ranks may wait in a collective
            raise
        shutdown(trainer.distributed)
    if trainer.exit_code > 128:  # stopped by a signal (exit code 128 + its number)
        print(f"stopped by {signal_name(trainer.exit_code - 128)}: last.pth saved at epoch {trainer.epoch + 1}, "
              f"step {trainer.global_step}; resume with --resume-from auto", file=sys.stderr)
        return trainer.exit_code
    report_after_training(trainer)  # PNG curves in <checkpoint-dir>/report; a failure only logs a warning
    log.info("Done: %s", trainer.stop_reason or f"{trainer.epoch}/{config.epochs} epochs complete")
    return 0


def run_lock(folder: str):
    """The folder's run lock (one live run per --checkpoint-dir), taken by rank 0 only under torchrun."""
    import contextlib
    from pathlib import Path

    from engine.build import check_writable
    from engine.checkpoint.lock import RunLock

    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    check_writable(Path(folder))
    return RunLock(folder)


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def dry_run(config, notes: Sequence[str] = ()) -> int:
    """Print the resolved config and the stage/LR plan (re-planned when resuming) without training."""
    import yaml

    from engine.build import check_new_run_folder, resolve_resume_path, select_device
    from engine.checkpoint.lock import check_unlocked
    from engine.checkpoint import load_checkpoint
    from engine.data_module import count_training_samples, resolve_num_workers
    from engine.monitors.averaging_windows import averaging_facts
    from engine.checkpoint.resume import planned_state
    from engine.stages import StagePlan

    select_device(config.device, config.amp, config.compile)
    print(yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip())
    for line in notes:
        print(line)
    resume_path = resolve_resume_path(config)
    check_new_run_folder(config, resume_path)
    check_unlocked(config.checkpoint_dir)
    payload = load_checkpoint(resume_path) if resume_path else None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    state, epoch, changes = planned_state(payload, config, world_size)
    notes = []
    if payload is not None:
        notes = ([f"changed: {change}" for change in changes] + [f"re-planned from epoch {epoch + 1}"] if changes
                 else ["same schedule settings as the checkpoint: continuing its plan"])
    plan = StagePlan(config, count_training_samples(config), state)
    print(f"plan (starting at epoch {epoch + 1}" + (f", resuming {resume_path}" if resume_path else "") + "):")
    facts, warnings = averaging_facts(config, plan, epoch)
    workers = resolve_num_workers(config.num_workers, world_size, warn=False)
    facts.append(f"data loading: {workers} DataLoader workers" + (" per rank" if world_size > 1 else "")
                 + (" (from the CPU cores)" if config.num_workers is None else ""))
    for line in notes + plan.describe() + facts:
        print(f"  {line}")
    for line in warnings:
        print(f"warning: {line}")
    print("dry run: configuration is valid; nothing was trained")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from data.synthetic import write_synthetic_dataset
    from engine.config import ConfigError
    from engine.safe_outputs import check_synth_output

    if args.num_train < 0 or args.num_test < 0 or args.size < 32:
        raise ConfigError("--num-train/--num-test must be >= 0 and --size >= 32")
    if not 0 < args.difficulty <= 1:
        raise ConfigError(f"--difficulty must be in (0, 1] (got {args.difficulty})")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed must be in [0, 2^32) (got {args.seed})")
    if args.size > 4096 or max(args.num_train, args.num_test) > 1_000_000:
        raise ConfigError("--size must be at most 4096 and --num-train/--num-test at most 1000000")
    check_synth_output(Path(args.output))
    counts = write_synthetic_dataset(args.output, args.num_train, args.num_test, seed=args.seed, size=args.size,
                                     difficulty=args.difficulty)
    logging.getLogger("train_ultimate").info("Wrote synthetic set to %s: %s", args.output, counts)
    return 0


def _check_inference_img_size(img_size: Optional[int]) -> None:
    """``--img-size`` of eval/predict/export: the training range (a huge side fails inside OpenCV)."""
    from engine.config import check_number

    if img_size is not None:
        check_number("img_size", img_size)


def _inference_setup(args: argparse.Namespace):
    from engine.build import select_device

    _check_inference_img_size(args.img_size)
    return select_device(args.device)


def _load_predictors(args: argparse.Namespace, default_weights: str) -> Dict[str, Any]:
    """``{weights: Predictor}`` of ``--checkpoint``: a .pth (base/EMA) or an exported .safetensors."""
    from engine.api import load_model
    from engine.evaluation.predictor import load_predictors

    device = _inference_setup(args)
    if str(args.checkpoint).endswith(".safetensors"):
        model = load_model(args.checkpoint, args.weights or "best", device, args.tta, args.img_size)
        return {model.weights: model.predictor}
    return load_predictors(args.checkpoint, args.weights or default_weights, device, args.tta, args.img_size)


def run_eval(args: argparse.Namespace) -> int:
    from engine.config import ConfigError
    from engine.evaluation.commands import evaluate
    from engine.evaluation.eval_results import eval_metadata, format_table, write_per_image, write_results
    from engine.safe_outputs import check_eval_outputs

    if not args.checkpoint and not args.predictions:
        raise ConfigError("eval needs --checkpoint FILE, --predictions DIR [DIR ...] or both")
    if not args.checkpoint and (args.weights or args.img_size or args.save_maps):
        raise ConfigError("--weights, --img-size and --save-maps apply to a --checkpoint; pass one or drop them")
    if not 1 <= args.batch_size <= 4096 or (args.num_workers is not None and not 0 <= args.num_workers <= 256):
        raise ConfigError(f"--batch-size must be in [1, 4096] and --num-workers in [0, 256] (got {args.batch_size}, "
                          f"{args.num_workers})")
    check_eval_outputs(args.output, args.per_image,
                       [args.checkpoint, *args.dataset_path, *(args.predictions or [])])
    predictors = _load_predictors(args, "auto") if args.checkpoint else {}
    workers = args.num_workers
    if workers is None:
        workers = 2 if any(p.device.type == "cuda" for p in predictors.values()) else 0
    evaluation = evaluate(predictors, args.dataset_path, args.include_noncam, args.skip_unpaired, args.predictions,
                          args.batch_size, workers, args.save_maps)
    print(format_table(evaluation.results))
    log = logging.getLogger("train_ultimate")
    if args.output:
        side = next(iter(predictors.values())).img_size if predictors else None
        meta = eval_metadata(evaluation, args.dataset_path, args.checkpoint, list(predictors),
                             args.tta if predictors else None, side, args.batch_size, evaluation.methods)
        csv_path = write_results(evaluation.results, meta, args.output)
        log.info("Wrote %s and %s", args.output, csv_path)
    if args.per_image:
        write_per_image(evaluation.per_image, args.per_image)
        log.info("Wrote %d per-image rows to %s", len(evaluation.per_image), args.per_image)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from engine.evaluation.commands import output_names, predict_images
    from engine.evaluation.predictor import list_images
    from engine.safe_outputs import check_predict_output, record_predict_output

    images = list_images(args.input)
    names = output_names(images)
    check_predict_output(args.output, images, names, args.overwrite, args.overlay)
    predictors = _load_predictors(args, "best")
    if images:  # none: predict_images says so, and nothing is created
        record_predict_output(args.output, names)
    predict_images(next(iter(predictors.values())), args.input, args.output, args.binary, args.overlay)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from engine.api import load_model
    from engine.export import check_output, export_model

    _check_inference_img_size(args.img_size)
    check_output(args.output, [args.checkpoint], args.overwrite)
    model = load_model(args.checkpoint, args.weights, "cpu", img_size=args.img_size)
    export_model(model, args.output, args.format, args.half)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from engine.evaluation.report import build_report

    build_report(args.checkpoint_dir)
    return 0


class _TqdmHandler(logging.StreamHandler):
    """Log lines printed through tqdm so they do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never crash training
            self.handleError(record)


def setup_logging(quiet: bool) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler], force=True)


def user_errors() -> tuple:
    """Exception types whose message is a complete one-line explanation for the user."""
    from data.layouts import DatasetError
    from engine.checkpoint import CheckpointError
    from engine.config import ConfigError
    from engine.errors import DeviceOutOfMemoryError
    from models import PretrainedWeightsError, UnknownBackboneError

    return (ConfigError, DatasetError, CheckpointError, PretrainedWeightsError, UnknownBackboneError,
            DeviceOutOfMemoryError)


def cuda_out_of_memory() -> type:
    import torch

    return torch.cuda.OutOfMemoryError


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The error boundary of every command: a user error (flags, files, folders, disks, numbers)
    ends with one line on stderr and exit code 2; a bug keeps its traceback."""
    args = build_parser().parse_args(argv)  # before any torch import: --help and flag errors answer at once
    setup_logging(args.quiet)
    from engine.errors import one_line, os_error_message
    from engine.nonfinite import TrainingDivergedError

    commands = {"train": run_train, "synth": run_synth, "eval": run_eval, "predict": run_predict,
                "export": run_export, "report": run_report}
    try:
        return commands[args.command](args)
    except user_errors() as error:
        return fail(one_line(error))
    except OSError as error:  # paths, permissions, full disks: the user's environment, not our code
        return fail(os_error_message(error))
    except MemoryError:
        return fail("out of memory: lower --batch-size, --img-size or --num-workers")
    except cuda_out_of_memory():  # outside training (eval, predict, export); train names its settings
        return fail("CUDA out of memory: lower --img-size or eval's --batch-size, use a lighter --tta, or run "
                    "with --device cpu")
    except TrainingDivergedError as error:
        return fail(one_line(error), code=1)
    except RuntimeError as error:  # a surviving DDP rank: the failing rank printed the real cause
        from engine.distributed import PEER_LOST_MESSAGE, is_peer_lost

        if not is_peer_lost(error):
            raise
        return fail(PEER_LOST_MESSAGE)
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    except SystemExit as stop:  # a second SIGTERM/SIGINT: the save in progress was finished first
        if isinstance(stop.code, int) and stop.code > 128:
            print(f"error: stopped at once by a second {signal_name(stop.code - 128)}; resume from the last "
                  "saved checkpoint with --resume-from auto", file=sys.stderr)
        raise


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
