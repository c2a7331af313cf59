#!/usr/bin/env python
"""Command-line entry point: ``python train_ultimate.py <train|synth|eval|predict|export|report> [flags]``.

The commands and their error boundary. The flags and their help live in ``cli_flags.py``; these two
are the only places that parse arguments. Flags override the YAML file, which overrides the defaults
of ``engine.config.TrainConfig``; every user error ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any, Dict, Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version ping on offline Kaggle / CI

from cli_flags import build_parser, flag_values  # noqa: E402
from engine.commands.console import cuda_out_of_memory, missing_package_line, setup_logging, user_errors  # noqa: E402

log = logging.getLogger("train_ultimate")


def run_train(args: argparse.Namespace) -> int:
    from engine.build import build_trainer, describe_run, run_warnings
    from engine.checkpoint.lock import run_lock
    from engine.commands.report import report_after_training
    from engine.config import load_yaml
    from engine.runtime.cuda_device import select_device
    from engine.runtime.distributed import shutdown
    from engine.runtime.launch import launch_ranks, ranks_to_launch
    from engine.training.data_module import dataset_origin, scan_data
    from engine.training.run_config import how_to_continue, resolve_run_config

    flags = flag_values(args)
    config, notes = resolve_run_config(yaml_values := load_yaml(args.config) if args.config else {}, flags)
    origin = dataset_origin(flags, yaml_values, args.config)  # how a dataset error names the path's source
    if args.dry_run:
        from engine.commands.dry_run import print_dry_run

        return print_dry_run(config, notes, origin)
    for line in notes:
        log.info(line)
    select_device(config.device, config.amp, config.compile)  # an unusable GPU is refused before any file is written
    sources = scan_data(config, origin)  # so are a bad --dataset-path and a missing package the settings need
    if (processes := ranks_to_launch(config, "devices" in flags)) > 1:  # this process launches the ranks, waits
        return launch_ranks(processes, os.path.abspath(__file__), args.argv)
    with run_lock(config.checkpoint_dir, rank=int(os.environ.get("RANK", "0"))):
        trainer = build_trainer(config, sources)
        for line in describe_run(trainer):
            log.info(line)
        for line in run_warnings(trainer):
            log.warning(line)
        try:
            trainer.fit()
        except BaseException:
            shutdown(trainer.distributed, failed=True)  # no barrier: the other ranks may wait in a collective
            raise
        shutdown(trainer.distributed)
    if trainer.exit_code > 128:  # stopped by a signal (exit code 128 + its number)
        continuation = how_to_continue(config.checkpoint_dir, config.time_limit)
        print(f"stopped by {signal.Signals(trainer.exit_code - 128).name}: last.pth saved at epoch "
              f"{trainer.epoch + 1}, step {trainer.global_step}; {continuation}", file=sys.stderr)
        return trainer.exit_code
    report_after_training(trainer)  # PNG curves in <checkpoint-dir>/report; a failure only logs a warning
    log.info("Done: %s", trainer.stop_reason or f"{trainer.epoch}/{config.epochs} epochs complete")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from engine.commands.synth import write_synthetic_set

    counts = write_synthetic_set(args.output, args.num_train, args.num_test, args.seed, args.size, args.difficulty)
    log.info("Wrote synthetic set to %s: %s", args.output, counts)
    return 0


def _check_inference_img_size(img_size: Optional[int]) -> None:
    """``--img-size`` of eval/predict/export: the training range (a huge side fails inside OpenCV)."""
    from engine.config import check_number

    if img_size is not None:
        check_number("img_size", img_size)


def _load_predictors(args: argparse.Namespace, default_weights: str) -> Dict[str, Any]:
    """``{weights: Predictor}`` of ``--checkpoint``: a .pth (base/EMA) or an exported .safetensors."""
    from engine.api import load_model
    from engine.commands.predictor import load_predictors
    from engine.runtime.cuda_device import select_device

    _check_inference_img_size(args.img_size)
    device = select_device(args.device)
    if str(args.checkpoint).endswith(".safetensors"):
        model = load_model(args.checkpoint, args.weights or "best", device, args.tta, args.img_size)
        return {model.weights: model.predictor}
    return load_predictors(args.checkpoint, args.weights or default_weights, device, args.tta, args.img_size)


def run_eval(args: argparse.Namespace) -> int:
    from engine.commands.eval_results import format_table, write_eval_outputs
    from engine.commands.evaluate import check_eval_request, default_eval_workers, evaluate
    from engine.commands.safe_outputs import check_eval_outputs

    check_eval_request(args.checkpoint, args.predictions, args.weights, args.img_size, args.save_maps,
                       args.batch_size, args.num_workers)
    check_eval_outputs(args.output, args.per_image, [args.checkpoint, *args.dataset_path, *(args.predictions or [])])
    predictors = _load_predictors(args, "auto") if args.checkpoint else {}
    workers = default_eval_workers(predictors) if args.num_workers is None else args.num_workers
    evaluation = evaluate(predictors, args.dataset_path, args.include_noncam, args.skip_unpaired, args.predictions,
                          args.batch_size, workers, args.save_maps)
    print(format_table(evaluation.results))
    write_eval_outputs(evaluation, predictors, args.dataset_path, args.checkpoint, args.tta, args.batch_size,
                       args.output, args.per_image)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from engine.commands.predict import output_names, predict_images
    from engine.commands.predictor import list_images
    from engine.commands.safe_outputs import check_predict_output, record_predict_output

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
    from engine.commands.export import check_output, export_model

    _check_inference_img_size(args.img_size)
    check_output(args.output, [args.checkpoint], args.overwrite)
    model = load_model(args.checkpoint, args.weights, "cpu", img_size=args.img_size)
    export_model(model, args.output, args.format, args.half)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from engine.commands.report import build_report

    build_report(args.checkpoint_dir)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The error boundary of every command: a user error (flags, files, folders, disks, numbers)
    ends with one line on stderr and exit code 2; a bug keeps its traceback."""
    args = build_parser().parse_args(argv)  # before any torch import: --help and flag errors answer at once
    args.argv = [str(word) for word in (sys.argv[1:] if argv is None else argv)]  # what launched ranks re-run
    setup_logging(args.quiet)
    from engine.runtime.errors import one_line, os_error_message
    from engine.training.nonfinite import TrainingDivergedError

    commands = {"train": run_train, "synth": run_synth, "eval": run_eval, "predict": run_predict,
                "export": run_export, "report": run_report}
    try:
        return commands[args.command](args)
    except ModuleNotFoundError as error:  # first: user_errors() itself imports packages that may be the missing one
        return fail(missing_package_line(error))  # re-raised when it is a module of this repository: a bug
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
        from engine.runtime.distributed import PEER_LOST_MESSAGE, is_peer_lost

        if not is_peer_lost(error):
            raise
        return fail(PEER_LOST_MESSAGE)
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    except SystemExit as stop:  # a second SIGTERM/SIGINT: the save in progress was finished first
        if isinstance(stop.code, int) and stop.code > 128:
            print(f"error: stopped at once by a second {signal.Signals(stop.code - 128).name}; continue from the last "
                  "checkpoint with --resume-from auto (a new session: --continue-from <its output>)", file=sys.stderr)
        raise


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
