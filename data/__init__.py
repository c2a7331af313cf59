"""Datasets, layouts, transforms and loaders for camouflaged-object segmentation."""

from data.dataset import SegmentationDataset
from data.image_io import find_unreadable, masks_all_empty, read_image, read_mask, swapped_sides_problem
from data.layouts import (
    IMAGE_EXTENSIONS,
    DatasetError,
    SamplePair,
    describe_layout,
    find_pairs,
    resolve_split_dirs,
)
from data.loaders import SeededEpochSampler, create_loader, set_loader_epoch
from data.synthetic import (
    TEST_INDEX_OFFSET,
    SyntheticCamouflageDataset,
    render_scene,
    write_synthetic_dataset,
)
from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augmentation_seed,
    build_train_transform,
    build_val_transform,
    to_sample,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "TEST_INDEX_OFFSET",
    "DatasetError",
    "SamplePair",
    "SeededEpochSampler",
    "SegmentationDataset",
    "SyntheticCamouflageDataset",
    "augmentation_seed",
    "build_train_transform",
    "build_val_transform",
    "create_loader",
    "describe_layout",
    "find_pairs",
    "find_unreadable",
    "masks_all_empty",
    "read_image",
    "read_mask",
    "render_scene",
    "resolve_split_dirs",
    "set_loader_epoch",
    "swapped_sides_problem",
    "to_sample",
    "write_synthetic_dataset",
]
