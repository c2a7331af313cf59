"""Weight EMA against timm's ModelEmaV3, buffers included, and once per optimizer step."""
import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from engine.callbacks.weight_ema import WeightEMA


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1))


def test_matches_timm_model_ema_v3_over_50_steps():
    model = small_net()
    ours, reference = WeightEMA(model, decay=0.9), ModelEmaV3(model, decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 51):
        model(torch.randn(4, 3, 8, 8)).mean().backward()  # BatchNorm buffers move too
        optimizer.step()
        optimizer.zero_grad()
        ours.update(model, step)
        reference.update(model)
    for (name, mine), theirs in zip(ours.state_dict().items(), reference.module.state_dict().values()):
        assert torch.allclose(mine.float(), theirs.float(), atol=1e-6), name
    assert not torch.equal(ours.state_dict()["1.running_mean"], model.state_dict()["1.running_mean"])


def test_formula_and_warmup():
    model = nn.Linear(2, 1)
    ema = WeightEMA(model, decay=0.99, warmup=True)
    before = ema.shadow.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1)
    decay = min(0.99, 2 / 11)
    assert torch.allclose(ema.shadow.weight, decay * before + (1 - decay) * model.weight)


def test_copy_from_restarts_the_shadow():
    model = small_net()
    ema = WeightEMA(model, decay=0.999)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    ema.copy_from(model)
    for mine, theirs in zip(ema.state_dict().values(), model.state_dict().values()):
        assert torch.equal(mine, theirs)
