"""Gradient checkpointing and channels-last change memory/layout, never the gradients: not even behind
frozen encoder stages, where reentrant checkpointing would drop them (models/checkpointing.py)."""
import pytest
import torch

from engine.commands.console import user_errors
from engine.training.losses import SegmentationCriterion
from engine.training.stages import PlanState, StagePlan
from engine.training.unfreeze import apply_unfreezing
from models import GradCheckpointingError, ModelConfig, build_model
from models import checkpointing


def gradients(model, images, masks, seed=0):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    SegmentationCriterion()(model(images), masks)["loss"].backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", ["test_convnext", "edgenext_xx_small"])
def test_grad_checkpointing_gives_the_same_gradients(backbone):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, num_experts=3, decoder_channels=16, pretrained=False))
    model.train()
    images, masks = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    plain = gradients(model, images, masks)
    model.decoder.router.dispatch_fraction.fill_(1 / 3)  # forward updated the dispatch EMA: reset it
    model.set_grad_checkpointing(True)
    checkpointed = gradients(model, images, masks)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6), name


def test_channels_last_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="test_convnext", num_experts=3, decoder_channels=16, pretrained=False))
    images, masks = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    plain = gradients(model, images, masks)
    model.decoder.router.dispatch_fraction.fill_(1 / 3)
    model = model.to(memory_format=torch.channels_last)
    last = gradients(model, images.to(memory_format=torch.channels_last), masks)
    for name in plain:
        assert torch.allclose(plain[name], last[name], rtol=1e-4, atol=1e-5), name


@pytest.fixture
def reentrant_timm():
    """timm's own checkpoints forced reentrant where this timm has the switch (>= 1.0.13), as
    ``TIMM_REENTRANT_CKPT=1`` or an older timm would have them; restored afterwards."""
    switch = checkpointing._timm_switch()
    if switch is None:
        yield False
        return
    use_reentrant_ckpt, set_reentrant_ckpt = switch
    previous = use_reentrant_ckpt()
    set_reentrant_ckpt(True)
    yield True
    set_reentrant_ckpt(previous)


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "edgenext_xx_small"])  # own loop; checkpoint_seq
def test_stages_behind_frozen_ones_get_their_gradients(backbone, tiny_config, reentrant_timm):
    config = tiny_config(backbone=backbone, epochs=6, stage1_epochs=1, progressive_unfreeze=True, unfreeze_interval=1)
    torch.manual_seed(0)
    model = build_model(config.model_config(synthetic=True))
    apply_unfreezing(model, StagePlan(config, 12, PlanState.fresh(config)), epoch_index=2)  # the 2 deepest train
    encoder = dict(model.encoder.named_parameters())
    frozen = [name for name, p in encoder.items() if not p.requires_grad]
    assert frozen and len(frozen) < len(encoder)  # a frozen shallow prefix, trainable deep stages
    trainable = {name for name, p in model.encoder.named_parameters(prefix="encoder") if p.requires_grad}
    images, masks = torch.randn(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    plain = gradients(model, images, masks)
    model.decoder.router.dispatch_fraction.fill_(1 / 3)
    model.set_grad_checkpointing(True)
    checkpointed = gradients(model, images, masks)
    missing = trainable - checkpointed.keys()
    assert not missing, f"{len(missing)} of {len(trainable)} trainable encoder tensors got no gradient"
    assert checkpointed.keys() == plain.keys() and trainable <= plain.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6), name
    if reentrant_timm:
        assert checkpointing._timm_switch()[0]() is True  # the encoder's forward put timm's switch back as it found it


def test_without_timms_switch_torchs_default_is_non_reentrant_inside_only(monkeypatch):
    """timm 1.0.9 - 1.0.12 call torch's checkpoint without ``use_reentrant``, under their own names for it."""
    from torch.utils.checkpoint import checkpoint as imported_early  # as an old timm module holds it

    monkeypatch.setattr(checkpointing, "_timm_switch", lambda: None)
    torch_default = checkpointing._torch_checkpoint_defaults()["use_reentrant"]
    layer = torch.nn.Linear(2, 2)
    with checkpointing.non_reentrant_checkpointing():
        imported_early(layer, torch.ones(1, 2)).sum().backward()  # the input does not require grad
    assert layer.weight.grad is not None
    assert checkpointing._torch_checkpoint_defaults()["use_reentrant"] is torch_default  # restored on exit


def test_grad_checkpointing_is_refused_in_one_line_where_it_would_drop_gradients(monkeypatch, reentrant_timm):
    """A timm whose checkpoints stay reentrant: the switch forced on and out of reach (or absent, before
    timm 1.0.13), torch's default not adjustable."""
    monkeypatch.setattr(checkpointing, "_timm_switch", lambda: None)
    monkeypatch.setattr(checkpointing, "_torch_checkpoint_defaults", lambda: None)
    model = build_model(ModelConfig(backbone="test_efficientnet", num_experts=3, decoder_channels=16, pretrained=False))
    with pytest.raises(GradCheckpointingError, match=r"install timm>=1\.0\.13") as refused:
        model.set_grad_checkpointing(True)
    assert "\n" not in str(refused.value) and not model.encoder.grad_checkpointing
    assert GradCheckpointingError in user_errors()  # the CLI prints it as one line, exit 2
