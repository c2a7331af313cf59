"""Everything that runs under autocast, checked against CUDA's real fp16/bf16 policy without a GPU.

The model, the loss, the Trainer's step, validation and the preview run on fake CUDA tensors
(``engine.runtime.fake_cuda``): CUDA autocast returns fp32 from ops (softmax, group_norm, upsampling, BCE)
where CPU autocast does not, so dtype clashes that only a GPU would hit show up here (issue 25:
the router's ``scatter`` of fp32 weights into fp16 logits crashed every CUDA run). The decoder runs
its GroupNorms and upsampling outside autocast in half precision (issue 37); what it saves for
backward, by dtype, is tests/models/test_half_precision.py's to count.
"""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch

from engine.callbacks.preview import PreviewCallback
from engine.commands.predictor import Predictor
from engine.config import TrainConfig
from engine.evaluation.mask_prior import ImageBlindBaseline
from engine.evaluation.mask_scores import MetricAccumulator
from engine.runtime.fake_cuda import FAKE_DEVICE, FakeCuda, cuda_autocast
from engine.training.losses import SegmentationCriterion
from engine.training.trainer import Trainer
from models import build_model
from models.config import ModelConfig
from models.router import TopKRouter

DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
MODES = [pytest.param(True, id="train"), pytest.param(False, id="eval")]
# (backbone, image side, train mode): a convnet whose first level is at stride 4, one with a
# stride-2 level (detail refinement, BatchNorm), a plain ViT (every level at stride 16) and a
# window-attention hybrid (MaxViT needs sides divisible by its windows). Eval mode where it
# changes something: BatchNorm's running statistics, and no router noise (every backbone).
MODEL_CASES = [
    pytest.param("test_convnext", 64, True, id="convnext-train"),
    pytest.param("test_efficientnet", 64, True, id="efficientnet-train"),
    pytest.param("test_efficientnet", 64, False, id="efficientnet-eval"),
    pytest.param("test_vit", 64, True, id="vit-train"),
    pytest.param("test_vit", 64, False, id="vit-eval"),
    pytest.param("test_maxvit", 160, True, id="maxvit-train"),
]


def _tiny_model(backbone: str, **overrides) -> torch.nn.Module:
    """Every expert kind (7), deep supervision on: all the decoder's paths run."""
    settings = dict(backbone=backbone, pretrained=False, num_experts=7, top_k=2, decoder_channels=16,
                    deep_supervision=True)
    settings.update(overrides)
    return build_model(ModelConfig(**settings))


def _criterion(normalization: str = "ema") -> SegmentationCriterion:
    return SegmentationCriterion(moe_loss_weight=0.01, deep_supervision_weight=0.5, normalization=normalization,
                                 side_supervision_weight=0.5)


def _check_step(output, losses, batch: int, side: int, num_experts: int, dtype: torch.dtype) -> None:
    """Shapes and dtypes of one forward + loss under autocast."""
    assert output.logits.shape == (batch, 1, side, side) and output.logits.device.type == "cuda"
    assert output.logits.dtype in (torch.float32, dtype)
    assert output.routing_weights.shape == (batch, num_experts) and output.routing_weights.dtype == torch.float32
    assert output.balance_loss.dtype == torch.float32 and output.balance_loss.shape == ()
    assert all(logits.shape == (batch, 1, side, side) for logits in output.expert_logits)
    for name, value in losses.items():
        assert value.dtype == torch.float32 and value.shape == (), name  # losses compute in float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("top_k", [1, 2])
def test_router_under_cuda_autocast(dtype, training, top_k):
    # Issue 25: the gate ran in fp16/bf16, softmax returned fp32 and scatter refused the mix.
    router = TopKRouter(16, num_experts=4, top_k=top_k, noise_std=0.5).train(training)
    with FakeCuda() as cuda:
        fake_router = cuda.module(router)
        features = cuda.empty(2, 16, 5, 7, dtype=dtype)
        with cuda_autocast(dtype):
            result = fake_router(features)
    assert result.weights.shape == (2, 4) and result.weights.dtype == torch.float32
    assert result.balance_loss.shape == () and result.balance_loss.dtype == torch.float32
    assert result.balance_loss.requires_grad and result.weights.requires_grad
    assert result.expert_fractions.dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backbone, side, training", MODEL_CASES)
def test_model_and_loss_under_cuda_autocast(backbone, side, training, dtype):
    model, criterion = _tiny_model(backbone).train(training), _criterion().train(training)
    with FakeCuda() as cuda:
        fake_model, fake_criterion = cuda.module(model), cuda.module(criterion)
        images, masks = cuda.images(2, side), cuda.masks(2, side)
        with cuda_autocast(dtype):  # forward and loss inside, as the Trainer's step runs them
            output = fake_model(images)
            losses = fake_criterion(output, masks)
    _check_step(output, losses, 2, side, 7, dtype)
    assert len(output.expert_logits) == 7 and len(output.side_logits) == len(model.decoder.context_levels)
    assert losses["objective"].requires_grad  # the router and every head reach the objective


@pytest.mark.parametrize("dtype", DTYPES)
def test_top1_routing_under_cuda_autocast(dtype):
    model, criterion = _tiny_model("test_convnext", top_k=1).train(), _criterion("none").train()
    with FakeCuda() as cuda:
        fake_model, images, masks = cuda.module(model), cuda.images(1, 64), cuda.masks(1, 64)
        with cuda_autocast(dtype):
            output = fake_model(images)
            losses = criterion(output, masks)
    _check_step(output, losses, 1, 64, 7, dtype)


@pytest.fixture(scope="module")
def default_setup():
    """The model and criterion of ``TrainConfig()``'s defaults (edgenext_base, 384 px, batch 8)."""
    config = TrainConfig()
    model_config = config.model_config(synthetic=True)
    assert not model_config.pretrained  # the synthetic default: no download
    criterion = SegmentationCriterion(config.moe_loss_weight, config.deep_supervision_weight,
                                      config.loss_normalization, config.side_supervision_weight,
                                      config.loss_normalization_beta)
    return config, build_model(model_config), criterion


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_model_at_full_size_under_cuda_autocast(default_setup, dtype):
    config, model, criterion = default_setup
    started = time.perf_counter()
    with FakeCuda() as cuda:
        fake_model = cuda.module(model.train())
        images, masks = cuda.images(config.batch_size, config.img_size), cuda.masks(config.batch_size, config.img_size)
        with cuda_autocast(dtype):
            output = fake_model(images)
            losses = criterion.train()(output, masks)
    _check_step(output, losses, config.batch_size, config.img_size, config.num_experts, dtype)
    assert time.perf_counter() - started < 30  # fake tensors carry no data: seconds, not minutes


class FakeCudaData:
    """The data module's interface, yielding fake CUDA batches (the last one short, as a real epoch's)."""

    def __init__(self, cuda: FakeCuda, num_samples: int, img_size: int):
        self.cuda, self.img_size = cuda, img_size
        self.train_dataset = self.val_dataset = list(range(num_samples))
        self.samples_per_rank, self.is_main_process = num_samples, True
        self.rank, self.world_size = 0, 1

    def batches(self, dataset, batch_size, epoch, shuffle, start_sample):
        for start in range(start_sample, len(dataset), batch_size):
            yield self.cuda.batch(min(batch_size, len(dataset) - start), self.img_size)

    def training_inputs(self, batch, device, memory_format, epoch, batch_index):
        return batch["image"], batch["mask"]

    def all_reduce(self, totals):
        return totals

    def close(self):
        pass


class NullSink:
    """A log sink, so the step also stacks its per-term log values."""

    def log_scalar(self, tag, value, step):
        pass

    def log_image(self, tag, image, step):
        pass


def _fake_cuda_trainer(cuda: FakeCuda, config: TrainConfig, dtype: torch.dtype) -> Trainer:
    """A real Trainer whose model, criterion, device and data are fake CUDA; autocast is CUDA's.

    Called outside ``cuda``'s mode: the real parts are built on the CPU, as on a GPU machine.
    """
    model = build_model(config.model_config(synthetic=True))
    model.set_grad_checkpointing(config.grad_checkpointing)  # as build_trainer prepares it
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = SegmentationCriterion(config.moe_loss_weight, config.deep_supervision_weight,
                                      config.loss_normalization, config.side_supervision_weight)
    data = FakeCudaData(cuda, 5, config.img_size)
    trainer = Trainer(config, model, criterion, data, [], torch.device("cpu"))
    trainer.model = trainer.unwrapped_model = cuda.module(model)
    trainer.criterion = cuda.module(criterion)
    trainer.device = FAKE_DEVICE
    trainer.precision.autocast = lambda: cuda_autocast(dtype)  # the Trainer's one autocast entry point
    return trainer


@pytest.mark.parametrize("dtype", DTYPES)
def test_trainer_step_under_cuda_autocast(tiny_config, dtype):
    # Stage 2 (BatchNorm of a trainable encoder in train mode), every loss term on, the memory flags on.
    config = tiny_config(backbone="test_efficientnet", skip_stage1=True, batch_size=2, accumulation_steps=2,
                         deep_supervision_weight=0.5, side_supervision_weight=0.5, loss_normalization="ema",
                         channels_last=True, grad_checkpointing=True)
    backpropagated, steps = [], []
    cuda = FakeCuda()
    trainer = _fake_cuda_trainer(cuda, config, dtype)
    trainer.add_log_sink(NullSink())
    # The backward pass and the optimizer need values; everything before them runs for real.
    trainer.precision.backward = backpropagated.append
    trainer._optimizer_step = lambda window_loss, *rest, **options: steps.append((window_loss, rest))
    with cuda:
        trainer._train_epoch()
    assert len(backpropagated) == math.ceil(5 / 2) and len(steps) == 2
    for loss in backpropagated:
        assert loss.dtype == torch.float32 and loss.shape == () and loss.requires_grad
    for window_loss, (_, _, fractions, terms, names) in steps:
        assert window_loss.dtype == torch.float32 and window_loss.shape == ()
        assert fractions.dtype == torch.float32 and fractions.shape == (config.num_experts,)
        assert terms.dtype == torch.float32 and terms.shape == (len(names),)


@pytest.mark.parametrize("dtype", DTYPES)
def test_validation_under_cuda_autocast(tiny_config, monkeypatch, dtype):
    config = tiny_config(backbone="test_efficientnet", batch_size=2)
    totals = []

    def record_totals(accumulator, reduced=None):  # compute() is the host sync: values a fake lacks
        totals.append(accumulator.totals() if reduced is None else reduced)
        return {key: 0.0 for key in ("iou", "dice", "mae", "loss")}

    monkeypatch.setattr(MetricAccumulator, "compute", record_totals)
    monkeypatch.setattr(ImageBlindBaseline, "compute", lambda baseline, all_reduce=None: 0.0)
    cuda = FakeCuda()
    trainer = _fake_cuda_trainer(cuda, config, dtype)
    with cuda:
        trainer.validate(trainer.model)
    (reduced,) = totals
    assert reduced.dtype == torch.float64 and reduced.shape == (5,)  # count, dice, iou, loss, mae


@pytest.mark.parametrize("dtype", DTYPES)
def test_preview_under_cuda_autocast(dtype):
    model = _tiny_model("test_efficientnet").train()
    callback = PreviewCallback(num_samples=2, tile_size=32)
    callback.images, callback.masks = torch.randn(2, 3, 64, 64), torch.rand(2, 1, 64, 64).round()
    with FakeCuda() as cuda:
        trainer = SimpleNamespace(unwrapped_model=cuda.module(model), device=FAKE_DEVICE,
                                  averaged_models={"ema": cuda.module(model)},
                                  precision=SimpleNamespace(autocast=lambda: cuda_autocast(dtype)))
        grid = callback.render(trainer)
    assert grid.dtype == torch.float32 and grid.shape == (3, 2 * 34 + 2, 4 * 34 + 2)  # image | GT | base | EMA
    assert trainer.unwrapped_model.training  # evaluating() gave the mode back


def test_predictor_runs_in_float32_on_cuda():
    # eval / predict / the Python API run without autocast: float32 end to end on a GPU.
    model = _tiny_model("test_efficientnet", deep_supervision=False)
    with FakeCuda() as cuda:
        predictor = Predictor(cuda.module(model), 64, model.encoder.normalization, FAKE_DEVICE, tta="flip-scale")
        probabilities = predictor.probabilities(cuda.images(2, 64))
    assert probabilities.shape == (2, 1, 64, 64) and probabilities.dtype == torch.float32
    assert probabilities.device.type == "cuda"
