"""Property test: on random file trees find_pairs returns exactly the shared stems or a DatasetError."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.layouts import DatasetError, find_pairs

_EXTENSIONS = [".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".bmp", ".webp", ".tif", ".tiff", ".txt", ".json", ""]
_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

_stems = st.one_of(
    st.text(alphabet="abcxyz019_- ", min_size=1, max_size=8),
    st.text(alphabet="abc19", min_size=1, max_size=4).map(lambda tail: f"COD10K-NonCAM-{tail}"),
    st.text(alphabet="abc19", min_size=1, max_size=4).map(lambda tail: f"COD10K-CAM-{tail}"),
)
_entry = st.tuples(_stems, st.sampled_from(_EXTENSIONS), st.booleans())  # (stem, ext, hidden)
_layout = st.sampled_from([("Imgs", "GT"), ("Image", "Mask"), ("Train/Image", "Train/GT_Object")])


def _write(folder: Path, entries) -> dict[str, int]:
    """Create the files; return how many image files each visible stem has."""
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for stem, extension, hidden in entries:
        name = f".{stem}{extension}" if hidden else f"{stem}{extension}"
        if name.strip(".") == "" or (folder / name).exists():
            continue
        (folder / name).write_bytes(b"x")
        if not hidden and extension.lower() in _IMAGE_EXTENSIONS:
            counts[stem] = counts.get(stem, 0) + 1
    return counts


def _expected(images: dict[str, int], masks: dict[str, int], include_noncam: bool) -> list[str] | None:
    """The stems find_pairs must return, or None where it must raise DatasetError."""
    if not images or not masks or max(images.values()) > 1 or max(masks.values()) > 1:
        return None
    if not include_noncam:
        images = {s: n for s, n in images.items() if not s.startswith("COD10K-NonCAM-")}
        masks = {s: n for s, n in masks.items() if not s.startswith("COD10K-NonCAM-")}
    if not images or images.keys() != masks.keys():
        return None
    return sorted(images)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    image_entries=st.lists(_entry, max_size=4),
    mask_entries=st.lists(_entry, max_size=4),
    shared=st.lists(_stems, max_size=6),
    layout=_layout,
    include_noncam=st.booleans(),
)
def test_find_pairs_matches_stems_or_raises(image_entries, mask_entries, shared, layout, include_noncam):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        image_dir, mask_dir = layout
        # Shared stems make full pairings likely, not just a string of errors.
        images = _write(root / image_dir, image_entries + [(stem, ".jpg", False) for stem in shared])
        masks = _write(root / mask_dir, mask_entries + [(stem, ".png", False) for stem in shared])
        expected = _expected(images, masks, include_noncam)
        try:
            pairs = find_pairs(root, "train", include_noncam=include_noncam)
        except DatasetError as error:
            assert "\n" not in str(error)
            assert expected is None, f"unexpected DatasetError: {error}"
            return
        assert expected is not None, "expected a DatasetError"
        assert [pair.name for pair in pairs] == expected
        assert all(pair.image.parent == root / image_dir and pair.mask.parent == root / mask_dir for pair in pairs)
