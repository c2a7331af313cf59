"""The state comparison behind every resume check fails on each kind of difference it must see."""
import math

import numpy as np
import pytest
import torch

from tests.state_compare import assert_same_state, state_differences

BASE = {
    "model": {"weight": torch.tensor([1.0, float("nan"), 3.0]), "steps": torch.tensor(4)},
    "optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}},
                  "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "name": "decoder"}]},
    "early_stopping": {"best": 0.41, "bad_epochs": 2, "best_nan": float("nan")},
    "rng": {"numpy": ("MT19937", np.arange(4, dtype=np.uint32), 1, 0, 0.0)},
    "history": [0.1, 0.2],
    "flag": True,
    "note": None,
}


def changed(edit):
    import copy

    state = copy.deepcopy(BASE)
    edit(state)
    return state


MUST_FAIL = {
    "lr changed": lambda s: s["optimizer"]["param_groups"][0].update(lr=5.0),
    "counter reset": lambda s: s["early_stopping"].update(bad_epochs=0),
    "best score changed": lambda s: s["early_stopping"].update(best=0.42),
    "NaN became a number": lambda s: s["early_stopping"].update(best_nan=0.0),
    "shorter list": lambda s: s["history"].pop(),
    "shorter tuple": lambda s: s["optimizer"]["param_groups"][0].update(betas=(0.9,)),
    "list became tuple": lambda s: s.update(history=tuple(s["history"])),
    "string changed": lambda s: s["optimizer"]["param_groups"][0].update(name="encoder"),
    "missing key": lambda s: s["early_stopping"].pop("bad_epochs"),
    "extra key": lambda s: s["early_stopping"].update(extra=1),
    "bool became int": lambda s: s.update(flag=1),
    "None became a value": lambda s: s.update(note=0),
    "int became float": lambda s: s["early_stopping"].update(bad_epochs=2.0),
    "tensor value": lambda s: s["model"]["weight"].__setitem__(0, 1.5),
    "tensor NaN moved": lambda s: s["model"].update(weight=torch.tensor([float("nan"), 2.0, 3.0])),
    "tensor dtype": lambda s: s["model"].update(steps=torch.tensor(4.0)),
    "tensor shape": lambda s: s["model"].update(steps=torch.tensor([4])),
    "numpy array": lambda s: s["rng"].update(numpy=("MT19937", np.arange(1, 5, dtype=np.uint32), 1, 0, 0.0)),
    "nested optimizer tensor": lambda s: s["optimizer"]["state"][0]["exp_avg"].__setitem__(1, 1e-12),
}


def test_equal_states_pass_with_nan_equal_to_nan():
    import copy

    assert state_differences(BASE, copy.deepcopy(BASE)) == []
    assert_same_state({"x": math.nan, "t": torch.tensor([math.nan])}, {"x": math.nan, "t": torch.tensor([math.nan])})


@pytest.mark.parametrize("case", sorted(MUST_FAIL))
def test_every_planted_difference_fails(case):
    with pytest.raises(AssertionError):
        assert_same_state(BASE, changed(MUST_FAIL[case]))


def test_the_message_names_the_path():
    differences = state_differences(BASE, changed(MUST_FAIL["lr changed"]))
    assert differences == ["state.optimizer.param_groups[0].lr: 0.001 != 5.0"]


def test_ignored_paths_are_left_out_and_nothing_else():
    left = {"config": {"checkpoint_dir": "/a", "lr": 1e-3}, "metrics": {"seconds": 1.0}}
    right = {"config": {"checkpoint_dir": "/b", "lr": 1e-3}, "metrics": {"seconds": 2.0}}
    assert_same_state(left, right, ignore=("state.config.checkpoint_dir", "state.metrics.seconds"))
    with pytest.raises(AssertionError, match="seconds"):
        assert_same_state(left, right, ignore=("state.config.checkpoint_dir",))
    with pytest.raises(AssertionError, match="lr"):
        assert_same_state(left, dict(right, config={"checkpoint_dir": "/b", "lr": 5.0}),
                          ignore=("state.config.checkpoint_dir", "state.metrics.seconds"))
