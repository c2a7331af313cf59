"""Multi-scale training's batch resize (data/batch_scale.py): the sides, the draw, the resize."""
import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.batch_scale import BatchScale
from engine.config import ConfigError, parse_scales
from engine.config.values import training_sides

ROOT = Path(__file__).resolve().parents[2]
SCALES = (0.75, 1.0, 1.25)


def test_sides_are_the_scaled_image_size_rounded_and_each_drawn_about_equally_often():
    assert training_sides(192, SCALES) == (144, 192, 240)
    assert training_sides(384, (1.25, 0.75, 1.0, 0.75)) == (288, 384, 480)
    scale = BatchScale(192, training_sides(192, SCALES), seed=42)
    counts = collections.Counter(scale.side_at(epoch, index) for epoch in range(10) for index in range(60))
    assert set(counts) == {144, 192, 240}
    assert all(150 <= count <= 250 for count in counts.values()), counts  # 600 draws, 200 expected each
    assert scale.largest_side == 240 and scale.enabled
    assert not BatchScale(192, training_sides(192, (1.0,)), seed=42).enabled


def test_the_draw_is_a_function_of_seed_epoch_and_batch_only():
    sides = training_sides(192, SCALES)
    first, again = BatchScale(192, sides, seed=42), BatchScale(192, sides, seed=42)
    sequence = [first.side_at(3, index) for index in range(40)]
    assert sequence == [again.side_at(3, index) for index in range(40)]
    assert sequence != [first.side_at(4, index) for index in range(40)]
    assert sequence != [BatchScale(192, training_sides(192, SCALES), seed=1).side_at(3, index) for index in range(40)]
    assert len(set(sequence)) == 3  # it varies from batch to batch


def test_another_process_with_another_hash_seed_draws_the_same_sides():
    code = ("from data.batch_scale import BatchScale; s = BatchScale(192, (144, 192, 240), 7); "
            "print([s.side_at(2, i) for i in range(30)])")
    here = [BatchScale(192, training_sides(192, SCALES), 7).side_at(2, i) for i in range(30)]
    for hash_seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONHASHSEED=hash_seed))
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == str(here)


def test_a_batch_is_resized_as_a_whole_and_masks_stay_in_range():
    scale = BatchScale(48, training_sides(48, (0.5, 1.5)), seed=0)
    images = torch.rand(3, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(3, 1, 48, 48) > 0.5).float()
    seen = set()
    for index in range(12):
        side = scale.side_at(0, index)
        resized, resized_masks = scale(images, masks, 0, index)
        assert resized.shape == (3, 3, side, side) and resized_masks.shape == (3, 1, side, side)
        assert resized.is_contiguous(memory_format=torch.channels_last)
        assert 0 <= resized_masks.min() and resized_masks.max() <= 1
        seen.add(side)
    assert seen == {24, 72}
    plain = BatchScale(48, training_sides(48, (1.0, 2.0)), seed=0)
    index = next(i for i in range(50) if plain.side_at(0, i) == 48)
    assert plain(images, masks, 0, index) == (images, masks)  # at --img-size the batch is passed on untouched


def test_non_square_batches_keep_their_aspect():
    scale = BatchScale(64, training_sides(64, (1.5,)), seed=0)
    resized, masks = scale(torch.rand(2, 3, 64, 48), torch.rand(2, 1, 64, 48), 0, 0)
    assert resized.shape[-2:] == (96, 72) and masks.shape[-2:] == (96, 72)


@pytest.mark.parametrize("text, scales", [("0.75,1,1.25", SCALES), ("1", (1.0,)), ("1.25, 0.75,1,1", SCALES),
                                          ("[0.75, 1, 1.25]", SCALES)])
def test_scales_parse_from_flags_and_yaml_lists(text, scales):
    assert parse_scales(text) == scales


@pytest.mark.parametrize("text", ["", "big", "0.75;1", "0", "-1,1", "2.5"])
def test_bad_scales_are_refused_in_one_line(text):
    with pytest.raises(ConfigError, match="--train-scales") as refused:
        parse_scales(text)
    assert "\n" not in str(refused.value)


def test_a_scale_below_32_pixels_is_refused_by_the_config_check(tiny_config):
    with pytest.raises(ConfigError, match="at least 32 px"):
        tiny_config(img_size=48, train_scales="0.5,1")
    assert tiny_config(img_size=48, train_scales="0.75,1,1.25").train_scales == "0.75,1,1.25"
