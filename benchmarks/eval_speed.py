"""Benchmark: ``eval`` images/s, batched with DataLoader workers vs the per-image loop it replaced.

Same checkpoint (a randomly initialised model saved as a checkpoint, or ``--checkpoint``), same
synthetic test set written by ``synth``, same scoring (pysodmetrics at each mask's size). The
baseline is eval's loop before batching: read one pair, one forward pass, score, in the main
process. Prints one JSON line with both rates, their ratio and the largest score difference.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.image_io import read_image, read_mask  # noqa: E402
from data.layouts import find_pairs  # noqa: E402
from data.synthetic import write_synthetic_dataset  # noqa: E402
from engine.checkpoint.format import FORMAT_VERSION, model_signature  # noqa: E402
from engine.commands.evaluate import evaluate  # noqa: E402
from engine.commands.predictor import load_predictors  # noqa: E402
from engine.config import build_config  # noqa: E402
from engine.evaluation.cod_metrics import CODMetrics, to_uint8_map  # noqa: E402
from models import build_model  # noqa: E402


def write_checkpoint(folder: Path, backbone: str, img_size: int) -> Path:
    """A format-3 checkpoint of a randomly initialised model (inference speed does not need training)."""
    config = build_config({}, dict(backbone=backbone, img_size=img_size, pretrained=False, num_experts=7,
                                   checkpoint_dir=str(folder)))
    model = build_model(config.model_config(synthetic=True))
    path = folder / "random_init.pth"
    torch.save({"version": FORMAT_VERSION, "config": config.to_dict(), "model_signature": model_signature(config),
                "trainer": {"model": model.state_dict()}}, path)
    return path


def per_image_loop(predictor, root: Path) -> dict:
    """eval before batching: one image per forward pass, reading in the main process."""
    metrics = CODMetrics()
    for pair in find_pairs(root, "test"):
        image = read_image(pair.image)
        ground_truth = read_mask(pair.mask) * np.uint8(255)
        metrics.step(to_uint8_map(predictor.predict(image, output_size=ground_truth.shape)), ground_truth)
    return metrics.results()


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a trained .pth (default: a random-init edgenext_xx_small)")
    parser.add_argument("--backbone", default="edgenext_xx_small", help="backbone of the random-init checkpoint")
    parser.add_argument("--img-size", type=int, default=256, help="inference side of that checkpoint (default: 256)")
    parser.add_argument("--images", type=int, default=96, help="synthetic test images (default: 96)")
    parser.add_argument("--image-side", type=int, default=320, help="side of the test images (default: 320)")
    parser.add_argument("--batch-size", type=int, default=8, help="batched eval's batch size (default: 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="batched eval's workers (default: 2)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        root = scratch / "test_set"
        write_synthetic_dataset(root, 0, args.images, seed=3, size=args.image_side)
        checkpoint = Path(args.checkpoint) if args.checkpoint else write_checkpoint(scratch, args.backbone,
                                                                                     args.img_size)
        predictor = load_predictors(checkpoint, "base", device)["base"]
        per_image_loop(predictor, root)  # warm-up: allocator, kernels, file cache
        loop_seconds, loop_scores = timed(lambda: per_image_loop(predictor, root))
        batched_seconds, evaluation = timed(lambda: evaluate({"base": predictor}, [root],
                                                             batch_size=args.batch_size,
                                                             num_workers=args.num_workers))
        # The same batches read in the main process: what workers add (or cost, when they compete
        # with the model's threads for the same few cores).
        serial_seconds, _ = timed(lambda: evaluate({"base": predictor}, [root], batch_size=args.batch_size))
    batched_scores = evaluation.results[next(iter(evaluation.results))]["base"]
    print(json.dumps({
        "benchmark": "eval_speed", "device": str(device), "torch_threads": torch.get_num_threads(),
        "checkpoint": str(args.checkpoint or f"random-init {args.backbone}"), "img_size": predictor.img_size,
        "images": args.images, "image_side": args.image_side, "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "per_image_images_per_s": round(args.images / loop_seconds, 2),
        "batched_images_per_s": round(args.images / batched_seconds, 2),
        "speedup": round(loop_seconds / batched_seconds, 2),
        "batched_no_workers_images_per_s": round(args.images / serial_seconds, 2),
        "speedup_no_workers": round(loop_seconds / serial_seconds, 2),
        "max_abs_score_difference": max(abs(batched_scores[key] - loop_scores[key]) for key in loop_scores),
    }))


if __name__ == "__main__":
    main()
