"""Find image/mask pairs in COD10K-v3 roots and test-pack folders (CAMO, CHAMELEON, NC4K)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from data.root_search import RootShape, search_roots_near

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# Folder names, in order of preference; matched case-insensitively.
IMAGE_DIR_NAMES = ("Image", "Imgs", "Images")
MASK_DIR_NAMES = ("GT_Object", "GT_Obj", "GT", "Mask", "Masks")
SPLIT_DIR_NAMES = {"train": ("Train", "TrainDataset"), "test": ("Test", "TestDataset")}
NONCAM_PREFIX = "COD10K-NonCAM-"
LAYOUT_COD10K = "cod10k-v3"
LAYOUT_PACK = "test-pack"
LAYOUT_CAMO = "camo"  # CAMO's own download: Images/Train + Images/Test, one GT folder for both
_EXPECTED = (
    "a COD10K-v3 root (Train/Image + Train/GT_Object, Test/Image + Test/GT_Object), a CAMO download "
    "(Images/Train, Images/Test + GT), SINet-V2's TrainDataset (Imgs + GT) or a test-pack folder "
    "(Imgs + GT, or Image + Mask)"
)


DATASET_FLAG = "--dataset-path"  # how messages name the setting; ``DatasetError.naming`` renames it


class DatasetError(ValueError):
    """A problem with the user's dataset; ``str()`` is one line naming the problem and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    def naming(self, origin: str) -> "DatasetError":
        """This error with the dataset setting named as it was given, e.g. ``dataset_path in
        configs/a.yaml`` instead of ``--dataset-path`` (which the messages name by default)."""
        if origin == DATASET_FLAG:
            return self
        return DatasetError(str(self).replace(DATASET_FLAG, origin))


@dataclass(frozen=True)
class SamplePair:
    """One training or test sample on disk."""

    image: Path
    mask: Path
    name: str


def _printable(name: str) -> str:
    """File names quoted on one line, whatever characters they contain."""
    return name.encode("unicode_escape").decode("ascii")


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(_printable(name) for name in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _find_child_dir(parent: Path, names: tuple[str, ...]) -> Path | None:
    """The first sub-folder of ``parent`` whose name matches one of ``names`` (case-insensitive)."""
    by_lower = {}
    for child in parent.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            by_lower.setdefault(child.name.lower(), child)
    for name in names:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


def _image_dirs(folder: Path) -> tuple[Path | None, Path | None]:
    return _find_child_dir(folder, IMAGE_DIR_NAMES), _find_child_dir(folder, MASK_DIR_NAMES)


def _layout_or_none(folder: Path) -> str | None:
    try:
        return describe_layout(folder, suggest=False)
    except (DatasetError, OSError):
        return None


def roots_near(path: str | Path) -> tuple[str, list[tuple[Path, str]]]:
    """Dataset roots (with their layouts) near ``path``, which is not one (``data.root_search``)."""
    return search_roots_near(Path(path), RootShape(IMAGE_DIR_NAMES, MASK_DIR_NAMES,
                                                   SPLIT_DIR_NAMES["train"] + SPLIT_DIR_NAMES["test"]), _layout_or_none)


def _pass_found(given: Path, found: tuple[str, list[tuple[Path, str]]]) -> str:
    """What to pass instead of ``given``, from :func:`roots_near`'s answer ``found``."""
    where, found_roots = found
    roots = [root for root, _ in found_roots]
    if where == "above":
        return (f"{given} lies inside the dataset root {roots[0]} ({found_roots[0][1]} layout): "
                f"pass it as {DATASET_FLAG}")
    start = next(folder for folder in (given, given.parent, given.parent.parent) if folder.is_dir())
    names = ", ".join(f"{root.relative_to(start).as_posix()}/" for root in roots[:4])
    names += f" and {len(roots) - 4} more" if len(roots) > 4 else ""
    place = "inside it" if start == given else f"in {start}"
    which = roots[0] if len(roots) == 1 else "one or more of " + " ".join(str(root) for root in roots[:4])
    return f"found {names} {place}: pass {which} as {DATASET_FLAG}"


def fix_dataset_path(given: Path, suggest: bool = True) -> str:
    """How to fix a ``--dataset-path`` that is not a root: the roots found near it (with ``suggest``),
    else the layouts accepted."""
    found = roots_near(given) if suggest else ("", [])
    if found[1]:
        return _pass_found(given, found) + "."
    return f"Fix {DATASET_FLAG}: it must point at {_EXPECTED}."


def _check_root(root: Path, suggest: bool) -> None:
    if not root.exists():
        raise DatasetError(f"Dataset folder not found: {root}; {fix_dataset_path(root, suggest)}")
    if not root.is_dir():
        raise DatasetError(f"Dataset path is not a folder: {root}; {fix_dataset_path(root, suggest)}")


def resolve_split_dirs(root: str | Path, split: str = "train", suggest: bool = True) -> tuple[Path, Path, str]:
    """Locate the image and mask folders of one split.

    Args:
        root: COD10K-v3 root or test-pack folder.
        split: "train" or "test" (ignored for test packs, which hold one set).
        suggest: when ``root`` is not a root, name the roots found near it (``roots_near``).

    Returns:
        (image_dir, mask_dir, layout name).

    Raises:
        DatasetError: the folder is missing or has neither layout.
    """
    if split not in SPLIT_DIR_NAMES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    given = root = Path(root)
    _check_root(root, suggest)
    image_dir, mask_dir = _image_dirs(root)
    layout = LAYOUT_PACK
    split_images = _find_child_dir(image_dir, SPLIT_DIR_NAMES[split]) if image_dir is not None else None
    if split_images is not None or (image_dir is not None and _find_child_dir(image_dir, SPLIT_DIR_NAMES["train"])):
        if split_images is None:  # a CAMO download without this split
            raise DatasetError(f"No {'/'.join(SPLIT_DIR_NAMES[split])} folder in {image_dir}. Fix --dataset-path.")
        image_dir, layout = split_images, LAYOUT_CAMO
    elif image_dir is None and mask_dir is None:
        split_dir = _find_child_dir(root, SPLIT_DIR_NAMES[split])
        if split_dir is None:
            wanted = "/".join(SPLIT_DIR_NAMES[split])
            raise DatasetError(f"No {wanted} folder and no image/mask folders in {root}; "
                               f"{fix_dataset_path(given, suggest)}")
        image_dir, mask_dir = _image_dirs(split_dir)
        root, layout = split_dir, LAYOUT_COD10K
    if image_dir is None or mask_dir is None:
        kind, looked = ("image", IMAGE_DIR_NAMES) if image_dir is None else ("mask", MASK_DIR_NAMES)
        found = roots_near(given) if suggest else ("", [])
        fix = _pass_found(given, found) if found[1] else f"add it or fix {DATASET_FLAG}"
        raise DatasetError(f"Missing {kind} folder in {root} (looked for {', '.join(looked)}); {fix}.")
    return image_dir, mask_dir, layout


def describe_layout(root: str | Path, suggest: bool = True) -> str:
    """Name the layout of ``root``: "cod10k-v3", "camo" or "test-pack" (raises DatasetError otherwise)."""
    for split in ("train", "test"):
        try:
            return resolve_split_dirs(root, split, suggest=False)[2]
        except DatasetError:
            continue
    return resolve_split_dirs(root, "train", suggest)[2]  # re-raise with the train split's message


def _files_by_stem(folder: Path, kind: str) -> dict[str, Path]:
    """Visible image files in ``folder`` keyed by stem; duplicate stems are an error."""
    found: dict[str, Path] = {}
    duplicates = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in found:
            duplicates.append(path.stem)
        found[path.stem] = path
    if duplicates:
        raise DatasetError(
            f"{len(duplicates)} {kind} stem(s) in {folder} appear with two extensions "
            f"(e.g. {_examples(sorted(duplicates))}); keep one file per stem."
        )
    if not found:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(
            f"No {kind} files in {folder} (expected {extensions}). Fix --dataset-path or re-download the dataset."
        )
    return found


def _keep_paired(
    images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path, skip_unpaired: bool
) -> list[str]:
    """Stems with both an image and a mask; unpaired files are an error unless ``skip_unpaired``."""
    lonely_images = sorted(images.keys() - masks.keys())
    lonely_masks = sorted(masks.keys() - images.keys())
    paired = sorted(images.keys() & masks.keys())
    if skip_unpaired:
        if lonely_images or lonely_masks:
            logger.warning(
                "Skipped %d masks without images and %d images without masks in %s (--skip-unpaired)",
                len(lonely_masks), len(lonely_images), image_dir.parent,
            )
        if not paired:
            raise DatasetError(
                f"No image in {image_dir} has a mask in {mask_dir} (files are paired by name stem); "
                "fix --dataset-path or the file names."
            )
        return paired
    if lonely_images:
        raise DatasetError(
            f"{len(lonely_images)} of {len(images)} images in {image_dir} have no mask in {mask_dir} "
            f"(e.g. {_examples(lonely_images)}); add the masks or remove those images, "
            "or pass --skip-unpaired to use only the complete pairs."
        )
    if lonely_masks:
        raise DatasetError(
            f"{len(lonely_masks)} of {len(masks)} masks in {mask_dir} have no image in {image_dir} "
            f"(e.g. {_examples(lonely_masks)}); add the images or remove those masks, "
            "or pass --skip-unpaired to use only the complete pairs."
        )
    return paired


def find_pairs(
    root: str | Path, split: str = "train", include_noncam: bool = False, skip_unpaired: bool = False
) -> list[SamplePair]:
    """List the image/mask pairs of one split, paired by file stem and sorted by name.

    COD10K's non-camouflaged images (``COD10K-NonCAM-*``) are left out unless
    ``include_noncam``; the standard protocol trains and tests on camouflaged images only.
    Hidden files (such as macOS ``._name.jpg``) and non-image files are ignored.

    Args:
        root: COD10K-v3 root (``Train/Image`` + ``Train/GT_Object``; ``GT_Obj``/``GT`` also
            accepted, as are ``TrainDataset``/``TestDataset``) or a test-pack folder
            (``Imgs`` + ``GT`` or ``Image`` + ``Mask``).
        split: "train" or "test"; ignored for test packs.
        include_noncam: keep ``COD10K-NonCAM-*`` samples.
        skip_unpaired: leave out images without masks and masks without images (CAMO as
            distributed has two masks without images), logging how many, instead of raising.

    Returns:
        Pairs sorted by name (the shared file stem).

    Raises:
        DatasetError: missing or empty folders, no complete pair, or (without ``skip_unpaired``)
            images without masks or masks without images.
    """
    image_dir, mask_dir, layout = resolve_split_dirs(root, split)
    images = _files_by_stem(image_dir, "image")
    masks = _files_by_stem(mask_dir, "mask")
    if layout == LAYOUT_CAMO:  # one GT folder holds the masks of both splits: keep this split's
        masks = {stem: path for stem, path in masks.items() if stem in images}
    skipped = 0
    if not include_noncam:
        skipped = sum(stem.startswith(NONCAM_PREFIX) for stem in images)
        images = {stem: path for stem, path in images.items() if not stem.startswith(NONCAM_PREFIX)}
        masks = {stem: path for stem, path in masks.items() if not stem.startswith(NONCAM_PREFIX)}
        if not images:
            raise DatasetError(
                f"All {skipped} images in {image_dir} are COD10K-NonCAM; "
                "pass --include-noncam to use them or fix --dataset-path."
            )
    stems = _keep_paired(images, masks, image_dir, mask_dir, skip_unpaired)
    pairs = [SamplePair(image=images[stem], mask=masks[stem], name=stem) for stem in stems]
    noncam = sum(pair.name.startswith(NONCAM_PREFIX) for pair in pairs)
    if skipped:
        logger.info(
            "Found %d CAM images in %s (%d NonCAM skipped; pass --include-noncam to use them)",
            len(pairs),
            image_dir,
            skipped,
        )
    elif noncam:
        logger.info("Found %d images in %s (%d CAM + %d NonCAM)", len(pairs), image_dir, len(pairs) - noncam, noncam)
    else:
        logger.info("Found %d image/mask pairs in %s (%s layout)", len(pairs), image_dir, layout)
    return pairs


def find_pairs_in_roots(
    roots: list[str | Path], split: str = "train", include_noncam: bool = False, skip_unpaired: bool = False
) -> list[SamplePair]:
    """The pairs of one split from several roots (e.g. COD10K-v3 + CAMO: the standard 4,040
    training images), root by root in the order given; each root logs what it holds.

    Raises:
        DatasetError: a root named twice, or two roots holding images of the same name (their
            cache entries, per-image rows and the training-set fingerprint key on the name).
    """
    seen: dict[Path, str] = {}
    for root in roots:
        resolved = Path(root).resolve()
        if resolved in seen:
            raise DatasetError(f"--dataset-path names {seen[resolved]} twice"
                               + (f" (also as {root})" if str(root) != seen[resolved] else "")
                               + "; give each root once.")
        seen[resolved] = str(root)
    pairs: list[SamplePair] = []
    owner: dict[str, str] = {}
    for root in roots:
        found = find_pairs(root, split, include_noncam, skip_unpaired)
        clashes = sorted(pair.name for pair in found if pair.name in owner)
        if clashes:
            raise DatasetError(f"{len(clashes)} image name(s) of {root} are also in {owner[clashes[0]]} "
                               f"(e.g. {_examples(clashes)}); the roots overlap: drop one of them or rename those files.")
        owner.update((pair.name, str(root)) for pair in found)
        pairs += found
    return pairs


def has_separate_test_split(root: str | Path) -> bool:
    """Whether ``root`` has a test split of its own (a COD10K-v3 Test folder or CAMO's Images/Test);
    a test pack or a training-only folder has none: its "test" images are its training images."""
    try:
        train = resolve_split_dirs(root, "train", suggest=False)
        test = resolve_split_dirs(root, "test", suggest=False)
    except DatasetError:
        return False
    return test[2] != LAYOUT_PACK and test[0] != train[0]
