"""The Trainer: owns the two-stage loop and the run's state; every optional feature is a callback.

State lives in one place: ``Trainer.state_dict()`` holds the model, optimizer, precision (scaler),
non-finite guard, criterion (loss normaliser), plan, progress counters and every callback's own
state, so a checkpoint is that dict plus metadata (``engine.checkpoint.format``). Callbacks reach
the run through the Trainer's services (``log_scalar``, ``log_image``, ``averaged_models``,
``request_stop``), never through each other.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from engine.config import TrainConfig
from engine.evaluation.validation_cod import COD_VALIDATION_METRICS
from engine.runtime.distributed import DistributedContext, agree, changing_buffers, sync_buffers, wrap_model
from engine.runtime.errors import DeviceOutOfMemoryError, out_of_memory_message
from engine.training.callback import Callback, CallbackList, StepOutput
from engine.training.loss_terms import loss_term_names, stacked_terms
from engine.training.modes import evaluating
from engine.training.nonfinite import NonFiniteGuard
from engine.training.optim import build_optimizer
from engine.training.precision import Precision
from engine.training.schedule import WindowPlan
from engine.training.stages import PlanState, StagePlan
from engine.training.unfreeze import apply_unfreezing
from engine.training.validation import validation_pass

logger = logging.getLogger(__name__)


def shows_bars(progress: str, stream=None) -> bool:
    """``--progress``: tqdm bars for ``bar``, and for ``auto`` when the stream is a terminal (saved
    logs, e.g. Kaggle's, get plain lines instead of bar fragments glued to log lines)."""
    stream = stream if stream is not None else sys.stderr
    return progress == "bar" or (progress == "auto" and hasattr(stream, "isatty") and stream.isatty())


class Trainer:
    """Runs stages, accumulation windows, validation and callbacks.

    Args:
        config: resolved settings of the run.
        model: ``CamoSegmenter`` (encoder -> decoder -> head) returning ``SegmentationOutput``.
        criterion: maps ``(output, masks)`` to a dict with the scalar ``loss``.
        data: provides ``train_dataset``, ``val_dataset``, ``loader(dataset, batch_size,
            epoch, shuffle, start_sample)``, ``training_inputs(batch, device, memory_format, epoch,
            batch_index)`` (the batch on the device, multi-scale resized) and ``close()``.
        callbacks: optional features, ``None`` entries dropped.
        device: where the model trains.
    """

    def __init__(self, config: TrainConfig, model: nn.Module, criterion: nn.Module, data,
                 callbacks: Iterable, device: torch.device, distributed: DistributedContext = DistributedContext()):
        self.config, self.model, self.criterion, self.data = config, model, criterion, data
        self.unwrapped_model = model  # self.model becomes the DDP wrapper under torchrun
        self.device, self.distributed = device, distributed
        self.plan = StagePlan(config, data.samples_per_rank, PlanState.fresh(config))
        self._wrapped_for: Optional[tuple] = None
        self.synced_buffers: Dict[str, tuple] = {}  # under DDP: the buffers training changes (runtime.distributed)
        self.optimizer = build_optimizer(model, config)
        self.precision = Precision.create(config.amp, device)
        self.guard = NonFiniteGuard(config.max_bad_steps)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.show_bars = data.is_main_process and shows_bars(config.progress)
        self.epoch = 0  # completed epochs
        self.global_step = 0  # completed optimizer steps
        self.batch_in_epoch = 0  # micro-batches of the current epoch already trained (mid-epoch resume)
        self.closed_epoch = 0  # last epoch whose on_epoch_end hooks all returned (set by fit)
        self.epoch_loss_sum = torch.zeros((), device=device)
        self.epoch_updates = 0
        self.should_stop = False
        self.validating = False  # inside validate() (an out-of-memory message names what was running)
        self.stop_reason = ""
        self.exit_code = 0  # non-zero: the process should end with it (e.g. 128 + signal number)
        self.progress: Optional[tqdm] = None
        self.epoch_started = time.monotonic()
        self.trainable_params = 0
        self.current_lr = 0.0
        self.image_blind_iou: Optional[float] = None  # set by the first validation (mask_prior.py)
        # (N, 2) per-image IoU and structure loss of the last validation (engine/training/validation.py);
        # val_per_image: the base weights' of this epoch, what the health report judges.
        self.last_per_image_scores: Optional[torch.Tensor] = None
        self.val_per_image: Optional[torch.Tensor] = None
        self.averaged_models: Dict[str, nn.Module] = {}  # e.g. {"ema": shadow}: validated and previewed too
        self._log_sinks: List[Any] = []
        self.callbacks = CallbackList()
        for callback in callbacks:
            if callback is not None:
                self.add_callback(callback)

    def add_callback(self, callback: Callback) -> None:
        """Add ``callback`` at its declared ``order`` and run its ``setup``."""
        self.callbacks.add(callback)
        callback.setup(self)

    # ----------------------------------------------------------------------------- the loop
    def fit(self) -> None:
        """Train the remaining epochs; ``teardown`` runs and workers stop whatever happens."""
        # A failure after an epoch's metrics row but before its save lets the log callback take the row back.
        self.closed_epoch = self.epoch
        try:
            self.callbacks.call("on_train_start", self)
            while self.epoch < self.config.epochs and not self.should_stop:
                if self._train_epoch():
                    break  # stopped mid-epoch (every rank): on_stop_mid_epoch saved the position
                record = self._end_epoch()
                self.callbacks.call("on_epoch_end", self, record)
                self.closed_epoch = record["epoch"]
                if self.distributed.enabled:  # a stop asked for on one rank (signal, time limit, quota) ends all
                    self.should_stop = bool(self._agree()[0])
            self.callbacks.call("on_train_end", self)
        except BaseException as error:
            self.callbacks.call_quietly("on_exception", self, error)
            if isinstance(error, torch.cuda.OutOfMemoryError):  # a resource error of the user's settings: one line
                raise DeviceOutOfMemoryError(self._out_of_memory_message()) from error
            raise
        finally:
            try:
                self.callbacks.call_quietly("teardown", self)
            finally:
                self.data.close()  # persistent workers stop here, also when training failed
                # the DDP wrapper holds the process group (see shutdown()); a later fit() wraps again
                self.model, self._wrapped_for = self.unwrapped_model, None

    def _out_of_memory_message(self) -> str:
        if self.validating:
            where, batch_size, flag = f"validation after epoch {self.epoch + 1}", self.config.batch_size, "--batch-size"
        else:
            stage = self.stage
            where = f"stage {stage} training (epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1})"
            batch_size = self.plan.batch_size(stage)
            flag = "--batch-size" if stage == 1 else "--stage2-batch-size"
        return out_of_memory_message(where, batch_size, flag, self.config.img_size, self.config.amp,
                                     self.config.grad_checkpointing)

    def _train_epoch(self) -> bool:
        """Train the rest of the epoch; True when every rank agreed to stop before its end."""
        stage = self.stage
        trainable = apply_unfreezing(self.unwrapped_model, self.plan, self.epoch)
        self._wrap_for_trainable()
        self.callbacks.call("on_epoch_start", self)
        batch_size = self.plan.batch_size(stage)
        batches = self.data.batches(self.data.train_dataset, batch_size, self.epoch, shuffle=True,
                                    start_sample=self.batch_in_epoch * batch_size)
        num_batches = math.ceil(self.data.samples_per_rank / batch_size)
        windows = WindowPlan(self.data.samples_per_rank, batch_size, self.config.accumulation_steps)
        self.epoch_started = time.monotonic() if self.batch_in_epoch == 0 else self.epoch_started
        self.progress = tqdm(total=num_batches, initial=self.batch_in_epoch, leave=False, dynamic_ncols=True,
                             desc=f"Epoch {self.epoch + 1}/{self.config.epochs} [stage {stage}]",
                             disable=not self.show_bars)
        self.trainable_params = trainable
        window_loss = torch.zeros((), device=self.device)
        term_names: Tuple[str, ...] = ()  # known after the first forward (the criterion's output keys)
        window_terms: Optional[torch.Tensor] = None
        for batch in batches:
            index = self.batch_in_epoch
            images, masks = self.data.training_inputs(batch, self.device, self.memory_format, self.epoch, index)
            share = images.shape[0] / windows.samples_in_window(index)  # real size of this window
            with self._gradient_sync(windows.is_window_end(index)):  # DDP all-reduces on the window's last only
                with self.precision.autocast():
                    output = self.model(images)
                    losses = self.criterion(output, masks)
                self.precision.backward(losses.get("objective", losses["loss"]) * share)
            window_loss += losses["loss"].detach().float() * share
            if self.is_logging:  # per-term log values, on the device like window_loss (no host sync)
                term_names = term_names or loss_term_names(self.criterion, losses)
                if term_names:
                    terms = stacked_terms(losses, term_names)
                    window_terms = terms * share if window_terms is None else window_terms + terms * share
            self.batch_in_epoch += 1
            self.progress.update(1)
            if windows.is_window_end(index):
                stop = self._optimizer_step(window_loss, windows.window_of(index), windows.num_windows,
                                            getattr(output, "expert_fractions", None), window_terms, term_names)
                window_loss, window_terms = torch.zeros((), device=self.device), None
                if stop:
                    self.should_stop = True
                    self.callbacks.call("on_stop_mid_epoch", self)
                    self.progress.close()
                    return True
        self.progress.close()
        return False

    def _optimizer_step(self, window_loss: torch.Tensor, window_index: int, num_windows: int,
                        expert_fractions: Optional[torch.Tensor], loss_terms: Optional[torch.Tensor] = None,
                        loss_term_names: Tuple[str, ...] = ()) -> bool:
        """One update at the end of an accumulation window; returns whether every rank stops after it.

        Skip-or-step and stop are read in one host sync (under DDP one all-reduce): a non-finite loss
        on one rank skips the update on all, a stop requested on one rank before it stops all here. A
        stop requested in this update's callbacks acts at once alone, under DDP at the next agreement.
        """
        lr = self.plan.lr_at(self.epoch, window_index)
        self._set_lr(lr)
        grad_norm = self.precision.unscale_and_clip(self.optimizer, self.model, self.config.grad_clip)
        loss_bad, grads_bad, stop_agreed = self._agree(self.guard.non_finite(window_loss, grad_norm))
        finite = not (loss_bad or grads_bad)
        self.precision.step(self.optimizer, apply=finite)
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.record(not loss_bad, not grads_bad, self.global_step + 1, lr, self.precision.scaler is not None)
        if finite:
            self._apply_update(window_loss, lr, grad_norm, window_index, num_windows, expert_fractions, loss_terms,
                               loss_term_names)
        return stop_agreed if self.distributed.enabled else self.should_stop

    def _agree(self, flags: Optional[torch.Tensor] = None) -> List[int]:
        """``[*flags, stop requested]`` agreed over the ranks (MAX; one host sync, one all-reduce under
        DDP). A stop requested on any rank is adopted with its exit code (e.g. 143 after SIGTERM)."""
        if not self.distributed.enabled:  # the host's own stop flag: no copy of it to the device per update
            return (agree(flags, self.distributed) if flags is not None else []) + [int(self.should_stop)]
        own = torch.tensor([self.should_stop, self.exit_code], device=self.device)
        values = agree(own if flags is None else torch.cat([flags.to(self.device, torch.int64), own]),
                       self.distributed)
        if values[-2] and not self.should_stop:
            self.stop_reason, self.exit_code = "a stop requested on another rank", values[-1]
        return values[:-1]

    def _apply_update(self, window_loss: torch.Tensor, lr: float, grad_norm: Optional[torch.Tensor],
                      window_index: int, num_windows: int, expert_fractions: Optional[torch.Tensor],
                      loss_terms: Optional[torch.Tensor], loss_term_names: Tuple[str, ...]) -> None:
        """Count a taken update and tell the callbacks (weight EMA, monitors, logs)."""
        sync_buffers(list(self.synced_buffers.values()), self.distributed)
        self.global_step += 1
        self.epoch_loss_sum += window_loss
        self.epoch_updates += 1
        step = StepOutput(loss=window_loss, lr=lr, grad_norm=grad_norm, step=self.global_step,
                          step_in_epoch=window_index + 1, steps_in_epoch=num_windows,
                          expert_fractions=None if expert_fractions is None else expert_fractions.detach(),
                          loss_terms=loss_terms, loss_term_names=loss_term_names if loss_terms is not None else ())
        self.callbacks.call("on_optimizer_step", self, step)

    def _gradient_sync(self, sync: bool):
        if sync or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _wrap_for_trainable(self) -> None:
        """(Re-)wrap in DDP when the trainable parameter set changed (DDP binds it at construction),
        and list again the buffers each step syncs (frozen stages and BatchNorm keep theirs)."""
        if not self.distributed.enabled:
            return
        key = tuple(p.requires_grad for p in self.unwrapped_model.parameters())
        if key != self._wrapped_for:
            self.model = self.unwrapped_model  # the old wrapper's last reference: wrap_model frees it
            self.model = wrap_model(self.unwrapped_model, self.distributed, self.device)
            self._wrapped_for = key
        self.synced_buffers = changing_buffers(self.unwrapped_model)

    def _set_lr(self, lr: float) -> None:
        self.current_lr = lr
        scales = self.plan.group_lr_scales(self.stage)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * scales[group["name"]]

    def _end_epoch(self) -> Dict[str, Any]:
        train_loss = (self.epoch_loss_sum / max(self.epoch_updates, 1)).item()
        metrics = self.validate(self.model)
        self.val_per_image = self.last_per_image_scores  # the base weights' (an EMA validation replaces the last)
        self.callbacks.call("on_validation", self, metrics)
        record = {
            "epoch": self.epoch + 1, "stage": self.stage, "global_step": self.global_step, "lr": self.current_lr,
            "train_loss": train_loss, "val_loss": metrics["loss"], "val_iou": metrics["iou"],
            "val_dice": metrics["dice"], "val_mae": metrics["mae"], "val_iou_ema": metrics.get("ema_iou"),
            "val_dice_ema": metrics.get("ema_dice"), "val_mae_ema": metrics.get("ema_mae"),
            "val_loss_ema": metrics.get("ema_loss"), "val_image_blind_iou": self.image_blind_iou,
            "trainable_params": self.trainable_params,
            "best_metric": self.config.best_metric,
            "seconds": round(time.monotonic() - self.epoch_started, 2),
        }
        for key in COD_VALIDATION_METRICS:  # only with --best-metric sm / wfm (they cost validation time)
            if key in metrics:
                record[f"val_{key}"], record[f"val_{key}_ema"] = metrics[key], metrics.get(f"ema_{key}")
        self.epoch += 1
        self.restart_epoch()
        return record

    def restart_epoch(self) -> None:
        """Forget the current epoch's progress: it restarts from its first batch."""
        self.batch_in_epoch = 0
        self.epoch_loss_sum = torch.zeros((), device=self.device)
        self.epoch_updates = 0

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """Everything that continues the run exactly (tensors and plain containers only)."""
        return {
            "model": self.unwrapped_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision.state_dict(),
            "guard": self.guard.state_dict(),
            "criterion": self.criterion.state_dict(),
            "plan": self.plan.state.state_dict(),
            "progress": {"epoch": self.epoch, "global_step": self.global_step, "batch_in_epoch": self.batch_in_epoch,
                         "epoch_loss_sum": self.epoch_loss_sum.detach().cpu(), "epoch_updates": self.epoch_updates},
            "callbacks": self.callbacks.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``state_dict()``; the model first, so callbacks starting fresh (``{}``) see it.

        Raises:
            RuntimeError: the weights do not fit the model.
        """
        self.unwrapped_model.load_state_dict(state["model"])
        progress = state.get("progress") or {}
        self.epoch, self.global_step = int(progress.get("epoch", 0)), int(progress.get("global_step", 0))
        self.batch_in_epoch = int(progress.get("batch_in_epoch", 0))
        self.epoch_loss_sum = progress.get("epoch_loss_sum", torch.zeros(())).to(self.device)
        self.epoch_updates = int(progress.get("epoch_updates", 0))
        self._load_optimizer(state.get("optimizer"))
        self.precision.load_state_dict(state.get("precision") or {})
        self.guard.load_state_dict(state.get("guard") or {})
        self.criterion.load_state_dict(state.get("criterion") or {}, strict=False)  # loss-normaliser EMAs
        if state.get("plan"):
            self.plan.state = PlanState.from_state_dict(state["plan"])
        self.callbacks.load_state_dict(state.get("callbacks") or {})

    def _load_optimizer(self, state: Optional[Dict[str, Any]]) -> None:
        if not state:
            logger.info("The checkpoint has no optimizer state: AdamW moments start fresh")
            return
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError) as error:
            logger.warning("The checkpoint's optimizer state does not match (%s); AdamW moments start fresh", error)
            return
        for group in self.optimizer.param_groups:  # the new run's weight decay wins
            if group["weight_decay"] > 0:
                group["weight_decay"] = self.config.weight_decay

    # ----------------------------------------------------------------------------- services
    def add_log_sink(self, sink) -> None:
        """Register an object with ``log_scalar(tag, value, step)`` / ``log_image(tag, image, step)``."""
        self._log_sinks.append(sink)

    @property
    def is_logging(self) -> bool:
        """Whether ``log_scalar`` goes anywhere (skip host copies made only for the log otherwise)."""
        return bool(self._log_sinks)

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        """Send a scalar to the run's log (TensorBoard on rank 0); a no-op without a sink."""
        for sink in self._log_sinks:
            sink.log_scalar(tag, value, step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """Send a ``(3, H, W)`` image in [0, 1] to the run's log; a no-op without a sink."""
        for sink in self._log_sinks:
            sink.log_image(tag, image, step)

    # ----------------------------------------------------------------------------- helpers
    @property
    def stage(self) -> int:
        return self.plan.stage_of(self.epoch)

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """Ask the loop to stop after the current optimizer step, with a checkpoint.

        ``exit_code`` (e.g. ``128 + SIGTERM``) tells the command line how the process should end.
        """
        if not self.should_stop:
            logger.info("Stopping: %s", reason)
        self.should_stop, self.stop_reason = True, reason
        self.exit_code = self.exit_code or exit_code

    def console_extras(self) -> Dict[str, str]:
        """Extra fields for the console line from callbacks offering ``console_extras()``."""
        extras: Dict[str, str] = {}
        for callback in self.callbacks:
            if hasattr(callback, "console_extras"):
                extras.update(callback.console_extras())
        return extras

    @torch.no_grad()
    def validate(self, module: nn.Module) -> Dict[str, float]:
        """Mean per-image IoU / Dice / MAE and structure loss of ``module`` on the validation set.

        ``on_validation`` callbacks call it for other weights (e.g. ``averaged_models["ema"]``).
        """
        module = self.unwrapped_model if module is self.model else module  # no DDP hooks in eval
        self.validating = True  # left set if validation fails: the error message reads it
        with evaluating(module):
            result = validation_pass(
                module, self.data, self.config, self.device, self.precision, self.memory_format, self.show_bars,
                measure_image_blind=self.image_blind_iou is None)
        if result.image_blind_iou is not None:
            self.image_blind_iou = result.image_blind_iou
        self.last_per_image_scores = result.per_image
        self.validating = False
        return result.metrics

