"""Checkpoint files: atomic writes, safe loading, damaged files, auto-resume selection."""
import os
import pickle

import pytest
import torch

from engine.checkpoint.files import (
    atomic_save, capture_rng_state, find_resumable, load_checkpoint, remove_stale_temp_files, restore_rng_state,
)
from engine.checkpoint.format import (
    FORMAT_VERSION, CheckpointError, check_model_format, has_ema, progress, saved_weights, upgrade,
)


def test_atomic_save_round_trip_and_no_temp_left(tmp_path):
    payload = {"model": {"w": torch.arange(4.0)}, "global_step": 3}
    atomic_save(payload, tmp_path / "last.pth")
    assert torch.equal(load_checkpoint(tmp_path / "last.pth")["model"]["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / ".tmp-ckpt-abc.pth").write_bytes(b"half a checkpoint")
    assert remove_stale_temp_files(tmp_path) == 1 and not list(tmp_path.iterdir())


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    atomic_save({"model": {"w": torch.ones(1000)}}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pth")
    for name, words in (("truncated.pth", "truncated"), ("text.pth", "truncated or not"), ("other.pth", "no model weights")):
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(tmp_path / name)


class _Payload:
    """Unpickling this would create a file: it must never run."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    with open(tmp_path / "evil.pth", "wb") as stream:
        torch.save({"model": {}, "extra": _Payload(str(marker))}, stream, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="arbitrary pickled objects"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def at_step(step):
    return {"version": FORMAT_VERSION, "trainer": {"model": {}, "progress": {"global_step": step}}}


def test_find_resumable_skips_damaged_and_picks_furthest(tmp_path, caplog):
    atomic_save(at_step(20), tmp_path / "last.pth")
    atomic_save(at_step(10), tmp_path / "epoch_1.pth")  # newer file, fewer steps
    data = (tmp_path / "last.pth").read_bytes()
    (tmp_path / "newer_but_broken.pth").write_bytes(data[:30])
    assert find_resumable(tmp_path) == tmp_path / "last.pth"
    assert "newer_but_broken.pth" in caplog.text
    os.remove(tmp_path / "last.pth")
    assert find_resumable(tmp_path) == tmp_path / "epoch_1.pth"
    assert find_resumable(tmp_path / "missing") is None


def test_rng_state_round_trip_is_weights_only(tmp_path):
    state = capture_rng_state()
    expected = torch.rand(3)
    atomic_save({"model": {}, "rng": state}, tmp_path / "rng.pth")
    restore_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_for_another_architecture_names_the_setting(tiny_config):
    from engine.build import build_trainer

    trainer = build_trainer(tiny_config(epochs=1))
    trainer.fit()
    other = tiny_config(resume_from=str(trainer.config.checkpoint_dir) + "/last.pth", num_experts=4, top_k=2)
    with pytest.raises(CheckpointError, match="--num-experts 3"):
        build_trainer(other)


def test_a_checkpoint_of_the_earlier_model_format_is_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="old.pth has format 1.*train anew"):
        check_model_format({"model": {}, "version": 1}, tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match="format 1"):
        check_model_format({"model": {}}, tmp_path / "old.pth")  # the first files had no version at all
    check_model_format({"model": {}, "version": FORMAT_VERSION}, tmp_path / "new.pth")


def test_format2_layout_is_upgraded_on_load(tmp_path):
    """Format 2 kept model/EMA/counters at the top level and the plateau multiplier in a callback."""
    weights, shadow = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    old = {"version": 2, "model": weights, "ema": shadow, "optimizer": {"state": {}}, "scaler": {},
           "epoch": 3, "global_step": 12, "batch_in_epoch": 1, "epoch_updates": 1, "epoch_loss_sum": torch.ones(()),
           "plan": {"stage2_start": 1, "origins": {"1": 0, "2": 1}}, "nonfinite_guard": {"bad": 0},
           "criterion": {}, "config": {"lr": 1e-3}, "world_size": 1, "best_weights": "ema",
           "callbacks": {"post_epoch": {"history": [], "lr_multiplier": 0.5, "adjusted_at_epoch": 3, "stage": 2},
                         "weight_ema": {"decay": 0.9}}}
    atomic_save(old, tmp_path / "old.pth")
    payload = load_checkpoint(tmp_path / "old.pth")
    assert payload["version"] == FORMAT_VERSION and payload["best_weights"] == "ema"
    assert progress(payload) == {"epoch": 3, "global_step": 12, "batch_in_epoch": 1, "epoch_loss_sum": torch.ones(()),
                                 "epoch_updates": 1}
    assert torch.equal(saved_weights(payload)["w"], weights["w"]) and has_ema(payload)
    assert torch.equal(saved_weights(payload, "ema")["w"], shadow["w"])
    assert payload["trainer"]["plan"]["lr_scales"] == {"2": 0.5}
    assert "lr_multiplier" not in payload["trainer"]["callbacks"]["post_epoch"]
    assert payload["trainer"]["callbacks"]["post_epoch"] == {"history": [], "stage": 2}
    assert payload["trainer"]["callbacks"]["plateau_lr"] == {"adjusted_at_epoch": 3}  # --auto-adjust-lr's own state
    assert payload["trainer"]["guard"] == {"bad": 0} and payload["trainer"]["optimizer"] == {"state": {}}
    assert upgrade(payload) is payload  # the current layout is left alone


def test_a_format3_file_from_before_the_plateau_callback_gives_it_its_halving_epoch():
    """The post-epoch monitor kept --auto-adjust-lr's last halving until the plateau LR callback took it over."""
    old = {"version": FORMAT_VERSION, "trainer": {"model": {}, "callbacks": {
        "post_epoch": {"history": [], "adjusted_at_epoch": 6}, "weight_ema": {"decay": 0.9}}}}
    callbacks = upgrade(old)["trainer"]["callbacks"]
    assert callbacks == {"post_epoch": {"history": []}, "plateau_lr": {"adjusted_at_epoch": 6},
                         "weight_ema": {"decay": 0.9}}
    assert old["trainer"]["callbacks"]["post_epoch"]["adjusted_at_epoch"] == 6  # the loaded dict is not edited
