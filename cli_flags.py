"""The CLI's flag tables and help texts: one argparse parser per command of ``train_ultimate.py``.

With ``train_ultimate.py`` the only place that parses arguments. Train flags are declared once in
``TRAIN_FLAGS``; their help states the default, read from ``engine.config.TrainConfig``.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

from engine.config import (AMP_MODES, BEST_METRICS, CACHE_MODES, DEVICES, NORMALIZATION_MODES, PROGRESS_MODES,
                           SCHEDULERS, TrainConfig)

DEFAULTS = TrainConfig()
BOOL = "bool"
PATHS = "paths"  # one or more folders

# (flag, type or BOOL, help). Help texts state the default, taken from TrainConfig.
TRAIN_FLAGS: Dict[str, List[tuple]] = {
    "data": [
        ("dataset-path", PATHS, "one or more roots trained on together (COD10K-v3 and CAMO: the standard 4,040 "
                                "images): a COD10K-v3 root (Train/Image + Train/GT_Object), a CAMO download "
                                "(Images/Train + GT), SINet-V2's TrainDataset or a folder with Imgs+GT / "
                                "Image+Mask; omitted: the built-in synthetic camouflage set"),
        ("include-noncam", BOOL, "also train on COD10K NonCAM images (empty masks); standard protocol is CAM-only"),
        ("skip-bad-samples", BOOL, "skip unreadable or truncated images/masks and masks with width and height "
                                   "swapped (reported) instead of stopping"),
        ("skip-unpaired", BOOL, "use only the complete image/mask pairs (the count left out is reported) instead "
                                "of stopping at images without masks or masks without images"),
        ("val-fraction", float, "fraction of the training images held out (seeded) for validation; "
                                "0 validates on the Test split instead"),
        ("img-size", int, "training/validation image side in pixels"),
        ("train-scales", str, "multi-scale training: each training batch is resized to one of these multiples of "
                              "--img-size, drawn per batch from --seed, the epoch and the batch (e.g. 0.75,1,1.25; "
                              "1: off). Validation and eval stay at --img-size; memory follows the largest"),
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
        ("min-feature-stride", int, "finest encoder stride of the FPN and the experts: 8 (default) hands the "
                                    "stride-4 level to the detail refinement; 4 fuses it too (at 64 channels "
                                    "about 1.5x the training time on a CPU)"),
        ("detail-channels", int, "width of the refinement that mixes the encoder level just finer than "
                                 "--min-feature-stride into the decoder output, U-Net style (0: off; "
                                 "backbones without such a level skip it)"),
        ("router-noise", float, "std of the router's exploration noise while training"),
        ("pretrained", BOOL, "load pretrained encoder weights (default: on for real datasets, off for synthetic)"),
        ("pretrained-path", str, "local pretrained weights file, for offline machines"),
        ("moe-loss-weight", float, "weight of the MoE load-balancing loss"),
        ("deep-supervision-weight", float, "weight of the per-expert structure losses (0: off)"),
        ("side-supervision-weight", float, "weight of the structure losses of each decoder level's side output "
                                           "(multi-level deep supervision; 0: off)"),
        ("loss-normalization", NORMALIZATION_MODES, "loss combination: none (weighted sum) or ema (each term divided "
                                                    "by its own bias-corrected EMA); TensorBoard gets loss/<term>_raw, "
                                                    "and loss/<term>_normalized with ema"),
        ("loss-normalization-beta", float, "EMA decay of --loss-normalization ema; window about 1/(1-beta) "
                                         "micro-batches (one EMA update per forward pass)"),
    ],
    "optimisation and stages": [
        ("batch-size", int, "stage-1 batch size per GPU (per torchrun rank: 2 GPUs train on twice as many images "
                            "per step)"),
        ("stage2-batch-size", int, "stage-2 batch size per GPU (default: --batch-size)"),
        ("accumulation-steps", int, "micro-batches per optimizer step"),
        ("epochs", int, "total epochs of the plan"),
        ("stage1-epochs", int, "epochs with the encoder frozen"),
        ("skip-stage1", BOOL, "start at stage 2 (encoder trainable)"),
        ("progressive-unfreeze", BOOL, "unfreeze encoder stages deepest-first in stage 2; both recipe configs "
                                       "(configs/cod10k*_edgenext_base.yaml) turn it on"),
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
        ("continue-from", str, "a later session: the previous session's output folder (read-only is fine, e.g. "
                               "/kaggle/input/<notebook>/checkpoints); its history is copied into --checkpoint-dir, "
                               "then the run resumes; refused when that folder holds no run"),
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
        ("grad-monitor-interval", int, "optimizer steps between gradient-gain measurements and grad-norm "
                                        "reports (0: both gradient monitors off)"),
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
        ("devices", str, "how many GPUs to train on, one process each, launched by this command: auto (every "
                         "visible GPU; one process on the CPU) or N (N gloo processes on the CPU); ignored under "
                         "torchrun, whose --nproc_per_node decides"),
        ("amp", AMP_MODES, "mixed precision (auto: bf16 on Ampere+, fp16 on older GPUs, off on CPU)"),
        ("channels-last", BOOL, "channels-last memory format for model and inputs. It cannot help this decoder: "
                                "CUDA's GroupNorm takes and returns NCHW, so each decoder block converts layouts "
                                "twice; only a convolutional encoder can gain"),
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


# Metavars of the train flags that take a value, where the type alone says too little.
METAVARS = {"checkpoint-dir": "DIR", "continue-from": "DIR", "cache-dir": "DIR", "resume-from": "FILE|auto",
            "pretrained-path": "FILE", "time-limit": "DURATION", "eval-epochs": "EPOCHS", "backbone": "NAME",
            "train-scales": "SCALES"}
KIND_METAVARS = {int: "N", float: "X", str: "TEXT"}
GUIDES = ("configs/ holds ready YAML files (demo.yaml, the COD10K + CAMO recipes); guides/ explains\n"
          "Kaggle sessions, EMA, LR schedules, plateaus, the monitors and training collapse.")


def _command_parser(subparsers, name: str, summary: str, description: str, examples: List[str], **kwargs):
    """A sub-command whose --help shows a description, examples and where to read more."""
    epilog = "examples:\n" + "\n".join(f"  python train_ultimate.py {name} {example}" for example in examples)
    return subparsers.add_parser(name, help=summary, description=description, epilog=f"{epilog}\n\n{GUIDES}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _add_train_parser(subparsers) -> None:
    parser = _command_parser(
        subparsers, "train", "train the MoE camouflage segmenter (two stages, EMA, resume)",
        "Train on COD10K-style data (--dataset-path), or on the built-in synthetic set when it is omitted.\n"
        "Stage 1 trains the decoder on a frozen encoder, stage 2 the whole model; the run writes\n"
        "best_model.pth, last.pth, metrics.jsonl, config.yaml and TensorBoard logs to --checkpoint-dir.",
        ["--config configs/demo.yaml",
         "--config configs/cod10k_camo_edgenext_base.yaml --dataset-path COD10K-v3 CAMO-V.1.0-CVIU2019 --dry-run",
         "--config configs/cod10k_edgenext_base.yaml --dataset-path COD10K-v3 --time-limit 11.5h",
         "--continue-from /kaggle/input/<previous-notebook>/checkpoints --time-limit 11.5h",
         "--checkpoint-dir checkpoints/run --resume-from auto"],
        usage="%(prog)s [--config FILE.yaml] [--dry-run] [options]")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of defaults (keys = flag names, e.g. "
                                                             "configs/demo.yaml); flags override it")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the config and plan, then exit")
    for group_name, flags in TRAIN_FLAGS.items():
        group = parser.add_argument_group(group_name)
        for flag, kind, text in flags:
            help_text = _help_text(flag, text)
            if kind is BOOL:
                group.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
            elif kind is PATHS:
                group.add_argument(f"--{flag}", nargs="+", default=None, metavar="ROOT", help=help_text)
            elif isinstance(kind, tuple):  # a choice: unknown values are refused at parse time
                group.add_argument(f"--{flag}", choices=kind, default=None, help=help_text)
            else:
                group.add_argument(f"--{flag}", type=kind, default=None, help=help_text,
                                   metavar=METAVARS.get(flag, KIND_METAVARS[kind]))


def _add_synth_parser(subparsers) -> None:
    parser = _command_parser(
        subparsers, "synth", "write the synthetic camouflage set in the COD10K-v3 layout",
        "Render synthetic camouflage scenes (a textured object on a similar background) with their masks\n"
        "as JPEG/PNG files in the COD10K-v3 folder layout, to try train / eval / predict without a download.",
        ["--output data/synthetic", "--output data/small --num-train 40 --num-test 10 --size 128"])
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="new or empty folder to create (Train/Image, Train/GT_Object, Test/...)")
    parser.add_argument("--num-train", type=int, default=400, metavar="N", help="training scenes (default: 400)")
    parser.add_argument("--num-test", type=int, default=100, metavar="N", help="test scenes (default: 100)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="scene seed (default: 0)")
    parser.add_argument("--size", type=int, default=256, metavar="N", help="image side in pixels (default: 256)")
    parser.add_argument("--difficulty", type=float, default=0.15, metavar="X",
                        help="texture shift, smaller is harder (default: 0.15)")


INFERENCE_CHOICES = {"tta": ("none", "flip", "flip-scale"), "device": ("auto", "cpu", "cuda")}


def _add_inference_flags(group) -> None:
    """Flags shared by ``eval`` and ``predict``."""
    group.add_argument("--tta", choices=INFERENCE_CHOICES["tta"], default="none",
                       help="test-time augmentation: average over a horizontal flip (flip) and also 0.75x/1.25x "
                            "sides (flip-scale) (default: none)")
    group.add_argument("--img-size", type=int, default=None, metavar="N",
                       help="inference side in pixels (default: the checkpoint's training --img-size)")
    group.add_argument("--device", choices=INFERENCE_CHOICES["device"], default="auto",
                       help="where the model runs (default: auto, a GPU when visible)")


def _add_eval_parser(subparsers) -> None:
    parser = _command_parser(
        subparsers, "eval", "score a checkpoint and/or saved prediction maps on test sets: S-measure, E-measure, "
                            "weighted F, MAE, IoU, Dice",
        "Score base and/or EMA weights of a checkpoint, and/or the saved prediction maps of any method\n"
        "(--predictions), on one or more test sets with the standard COD metrics (pysodmetrics), each\n"
        "prediction resized to its ground truth's original size; one table row per weights or method.\n"
        "Images with an empty ground truth (COD10K NonCAM, only with --include-noncam): IoU and Dice\n"
        "are 1 when nothing is predicted, else 0; weighted F is 0 (pysodmetrics' convention).",
        ["--checkpoint checkpoints/demo/best_model.pth --dataset-path data/synthetic",
         "--checkpoint best_model.pth --dataset-path COD10K-v3 CAMO NC4K CHAMELEON --output scores.json",
         "--predictions maps/SINet-V2 --dataset-path COD10K-v3"])
    inputs = parser.add_argument_group("inputs (--checkpoint, --predictions or both)")
    inputs.add_argument("--checkpoint", default=None, metavar="FILE",
                        help="a .pth written by train (e.g. best_model.pth) or a .safetensors written by export")
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
    inference.add_argument("--batch-size", type=int, default=8, metavar="N",
                           help="images per forward pass (default: 8)")
    inference.add_argument("--num-workers", type=int, default=None, metavar="N",
                           help="DataLoader workers reading the test images (default: 2 when the model runs on a "
                                "GPU, 0 on CPU, where workers would compete with the forward pass for the cores)")
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
    parser = _command_parser(
        subparsers, "export", "write one weight set as safetensors, or the model as ONNX / torch.export (.pt2)",
        "safetensors: the chosen weights (optionally fp16) with the model config as metadata, loaded by\n"
        "engine.api.load_model. onnx / pt2: a logits-only graph taking RGB in [0, 1] at any size,\n"
        "(B, 3, H, W) -> (B, 1, H, W) logits, with dynamic batch, height and width.",
        ["--checkpoint checkpoints/demo/best_model.pth --output demo.safetensors",
         "--checkpoint best_model.pth --format onnx --output model.onnx"])
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a .pth written by train (or an exported .safetensors)")
    parser.add_argument("--output", required=True, metavar="FILE", help="file to write (never the checkpoint)")
    parser.add_argument("--format", choices=("safetensors", "onnx", "pt2"), default="safetensors",
                        help="safetensors (weights + config), onnx or pt2 (torch.export) (default: safetensors)")
    parser.add_argument("--weights", choices=("best", "base", "ema"), default="best",
                        help="weights to export (default: best, the ones that scored best in training)")
    parser.add_argument("--half", action="store_true", help="store safetensors weights as fp16 (default: off)")
    parser.add_argument("--img-size", type=int, default=None, metavar="N",
                        help="inference side stored with the model (default: the checkpoint's training --img-size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file (default: off)")


def _add_predict_parser(subparsers) -> None:
    parser = _command_parser(
        subparsers, "predict", "write mask PNGs for an image or a folder, at the original size",
        "Segment the camouflaged object in each image with a trained checkpoint and write one mask PNG\n"
        "per image at the image's own size (probabilities as 0-255, or 0/255 with --binary).",
        ["--checkpoint checkpoints/demo/best_model.pth --input photo.jpg --output masks",
         "--checkpoint best_model.pth --input test_images/ --output masks --binary --overlay"])
    inputs = parser.add_argument_group("inputs and outputs")
    inputs.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a .pth written by train (e.g. best_model.pth)")
    inputs.add_argument("--input", required=True, metavar="PATH",
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
    parser = _command_parser(
        subparsers, "report", "draw PNG curves of a run (loss + loss EMA, val IoU base vs EMA, LR, gradient gain, "
                              "experts)",
        "Figures from metrics.jsonl and the TensorBoard scalars of a run, written to\n"
        "<checkpoint-dir>/report/; figures whose data is missing are skipped with a note.\n"
        "train runs this automatically at its end.",
        ["--checkpoint-dir checkpoints/demo"])
    parser.add_argument("--checkpoint-dir", required=True, metavar="DIR", help="the run's --checkpoint-dir")


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
    """The train flags given on the command line (None = not given); ``-q`` means ``--progress off``
    unless a progress mode is given."""
    names = [flag.replace("-", "_") for flags in TRAIN_FLAGS.values() for flag, _, _ in flags]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if getattr(args, "quiet", False) and "progress" not in given:
        given["progress"] = "off"
    return given
