"""DataLoader workers per rank: unset, the CPU cores shared out between the torchrun ranks."""
import logging

import pytest

import engine.training.data_module as data_module
from engine.config import TrainConfig, build_config
from engine.training.data_module import MAX_AUTO_WORKERS, build_data, resolve_num_workers

NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture
def cpus(monkeypatch):
    """``cpus(n)``: this machine has ``n`` cores."""
    return lambda count: monkeypatch.setattr(data_module, "available_cpus", lambda: count)


@pytest.mark.parametrize("count, world_size, expected", [
    (4, 1, 4), (4, 2, 2),  # Kaggle: one GPU, two GPUs
    (2, 1, 2), (1, 1, 1), (3, 2, 1),
    (4, 8, 0),  # more ranks than cores: each loads in its main process
    (64, 1, MAX_AUTO_WORKERS), (64, 8, MAX_AUTO_WORKERS),
])
def test_unset_workers_share_the_cores_between_ranks(cpus, count, world_size, expected):
    cpus(count)
    assert resolve_num_workers(None, world_size) == expected


def test_an_explicit_number_is_kept_and_warned_about_when_it_oversubscribes(cpus, caplog):
    cpus(4)
    with caplog.at_level(logging.WARNING):
        assert resolve_num_workers(2, world_size=2) == 2  # 4 workers for 4 cores: fine
        assert resolve_num_workers(0, world_size=8) == 0
        assert not caplog.records
        assert resolve_num_workers(4, world_size=2) == 4
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "--num-workers 4 x 2 process(es) = 8 DataLoader workers for 4 CPU cores" in message
    assert "leave --num-workers out to use 2 per process" in message
    caplog.clear()
    assert resolve_num_workers(4, world_size=2, warn=False) == 4  # ranks other than 0 stay quiet
    assert not caplog.records


def test_build_data_uses_the_resolved_number_and_only_rank_0_warns(cpus, tiny_config, caplog):
    cpus(4)
    assert build_data(tiny_config(num_workers=None), NORMALIZATION, rank=1, world_size=2).num_workers == 2
    with caplog.at_level(logging.WARNING):
        assert build_data(tiny_config(num_workers=3), NORMALIZATION, rank=1, world_size=2).num_workers == 3
        assert not caplog.records
        build_data(tiny_config(num_workers=3), NORMALIZATION, rank=0, world_size=2)
    assert "6 DataLoader workers for 4 CPU cores" in caplog.text


def test_the_stored_config_keeps_unset_as_unset_and_a_number_as_given():
    """A resumed run re-resolves an unset value on the machine it resumes on (another Kaggle
    session may have another GPU count); a number someone chose is inherited like any flag."""
    stored = TrainConfig().to_dict()
    assert stored["num_workers"] is None
    assert build_config({}, {}, base_values=stored).num_workers is None
    assert build_config({}, {}, base_values=dict(stored, num_workers=3)).num_workers == 3
    assert build_config({}, {"num_workers": 1}, base_values=dict(stored, num_workers=3)).num_workers == 1
