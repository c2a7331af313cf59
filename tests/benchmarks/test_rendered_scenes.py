"""benchmarks/rendered_scenes.py: the source's epoch-0 samples, served for every epoch tag."""
import pytest
import torch

from benchmarks.rendered_scenes import RenderedScenes
from data.loaders import EpochIndex
from data.synthetic import SyntheticCamouflageDataset
from data.transforms import build_train_transform


@pytest.mark.parametrize("workers", [0, 2])
def test_rendered_scenes_are_the_sources_epoch_zero_samples_at_any_epoch(workers):
    source = SyntheticCamouflageDataset(4, 48, 0, 0.15, build_train_transform(48), fresh_each_epoch=True)
    rendered = RenderedScenes(source, workers)
    assert len(rendered) == len(source)
    for index in range(len(source)):
        expected = source[EpochIndex(0, index)]
        for item in (index, EpochIndex(3, index)):
            served = rendered[item]
            assert served.keys() == expected.keys() and served["name"] == expected["name"]
            assert torch.equal(served["image"], expected["image"]) and torch.equal(served["mask"], expected["mask"])
    assert not torch.equal(source[EpochIndex(3, 0)]["image"], rendered[EpochIndex(3, 0)]["image"])  # fresh scenes
