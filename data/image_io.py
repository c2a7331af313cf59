"""Read images and masks robustly: grayscale, RGBA, palette and 16-bit files; clear errors."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data.layouts import DatasetError, SamplePair

logger = logging.getLogger(__name__)

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND"
_PNG_COLOUR_TYPE_BYTE = 25  # 8-byte signature, IHDR length + type, width, height, bit depth, colour type
_PNG_PALETTE = 3
_TAIL_BYTES = 1024


def _unreadable(path: Path, why: str) -> DatasetError:
    # No flag advice here: which flag skips such files depends on the command (train adds it).
    return DatasetError(f"Cannot read {path}: {why}. Re-download or delete the file.")


def truncation_problem(data: bytes | np.ndarray) -> str | None:
    """Cheap check of a file's bytes for emptiness or a missing JPEG/PNG end marker.

    OpenCV decodes a truncated JPEG without error (the missing part comes out grey), so the end
    marker is checked explicitly. Entropy-coded JPEG data never contains 0xFFD9 (0xFF bytes are
    stuffed), so an EOI near the end means the file is complete.

    Returns:
        A short description of the problem, or None if the file looks complete.
    """
    if len(data) == 0:
        return "the file is empty"
    head, tail = bytes(data[: len(_PNG_START)]), bytes(data[-_TAIL_BYTES:])
    if head.startswith(_JPEG_START) and _JPEG_END not in tail:
        return "the JPEG is truncated (no end-of-image marker)"
    if head.startswith(_PNG_START) and _PNG_END not in tail:
        return "the PNG is truncated (no IEND chunk)"
    return None


def _read_bytes(path: Path) -> np.ndarray:
    """A file's bytes, checked for emptiness and truncation; raise DatasetError on failure."""
    try:
        # np.fromfile + imdecode copes with non-ASCII paths that cv2.imread cannot open.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise _unreadable(path, error.strerror or "the file cannot be opened") from error
    problem = truncation_problem(data)
    if problem is not None:
        raise _unreadable(path, problem)
    return data


def _decode(path: str | Path, data: np.ndarray | None = None) -> np.ndarray:
    """Decode a file with all channels and its native bit depth; raise DatasetError on failure."""
    path = Path(path)
    data = _read_bytes(path) if data is None else data
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise _unreadable(path, "it is not a decodable image")
    return array


def _is_palette_png(data: np.ndarray) -> bool:
    """PNG colour type 3 (indexed), read from the IHDR chunk."""
    return (len(data) > _PNG_COLOUR_TYPE_BYTE and bytes(data[: len(_PNG_START)]) == _PNG_START
            and int(data[_PNG_COLOUR_TYPE_BYTE]) == _PNG_PALETTE)


def _palette_mask(path: Path, data: np.ndarray) -> np.ndarray:
    """(H, W) {0, 1} object map of a palette PNG (OpenCV would expand it to BGR, losing the indices).

    A label map (a used entry coloured, e.g. VOC's index 1 = (128, 0, 0), or missing from the
    palette) marks objects by non-zero index, however dark their colour. When every used entry
    is gray, the file is a gray image stored indexed (Pillow's ``convert("P")`` of a gray mask)
    and is read like one, so JPEG-like noise in it stays background.
    """
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            if image.mode != "P":  # e.g. "PA": Pillow's own conversion keeps the indices
                image = image.convert("P")
            indices = np.asarray(image)
            palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
    except (OSError, ValueError) as error:
        raise _unreadable(path, f"the palette PNG cannot be decoded ({error})") from error
    used = np.unique(indices)
    colours = palette[used[used < len(palette)]]
    if len(colours) == len(used) and np.all(colours == colours[:, :1]):
        gray = np.zeros(256, np.uint8)
        gray[: len(palette)] = palette[:, 0]
        return _binarise(gray[indices], lossless=True, path=path)
    return (indices != 0).astype(np.uint8)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any decoded bit depth to uint8 (16-bit: /257; float: 0-1 assumed if max <= 1)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = array.astype(np.float32)
    if values.size and float(np.nanmax(values)) <= 1.0:
        values = values * 255.0
    return np.clip(np.nan_to_num(values) + 0.5, 0, 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB.

    Grayscale is replicated to three channels; an alpha channel is composited over black;
    palette PNGs are expanded by OpenCV; 16-bit and float images are scaled to 8 bits.

    Args:
        path: image file.

    Returns:
        (H, W, 3) uint8 RGB array.

    Raises:
        DatasetError: the file is missing, empty, truncated or not an image.
    """
    array = _to_uint8(_decode(path))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    channels = array.shape[2]
    if channels == 2:  # gray + alpha
        gray = array[:, :, 0].astype(np.float32) * (array[:, :, 1].astype(np.float32) / 255.0)
        return cv2.cvtColor(np.clip(gray + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        composited = np.clip(array[:, :, :3].astype(np.float32) * alpha + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(composited, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(array[:, :, :3], cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask and binarise it at > 127; in colour masks any channel above 127 is object.

    Colour masks count every non-black pixel (max over channels > 127), so pure red or blue
    objects on black are kept. A palette PNG marks objects by non-zero palette index (see
    :func:`_palette_mask`). A colour-less RGBA mask (constant colour, varying alpha) uses its alpha
    channel. A lossless (non-JPEG) mask whose only values are exactly 0 and 1 is taken as a 0/1
    label map rather than an almost-black image (binarising it at 127 would silently erase the
    object).

    Args:
        path: mask file (any bit depth, gray, RGB, RGBA or palette).

    Returns:
        (H, W) uint8 array in {0, 1}.

    Raises:
        DatasetError: the file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    data = _read_bytes(path)
    if _is_palette_png(data):
        return _palette_mask(path, data)
    return _binarise(_decode(path, data), lossless=path.suffix.lower() not in {".jpg", ".jpeg"}, path=path)


def _binarise(array: np.ndarray, lossless: bool, path: Path) -> np.ndarray:
    """(H, W) {0, 1} object map of a decoded mask (gray, BGR(A), any bit depth)."""
    if lossless and array.ndim == 2 and np.array_equal(np.unique(array), [0, 1]):
        logger.debug("%s holds 0/1 labels; treating 1 as foreground", path)
        return array.astype(np.uint8)
    array = _to_uint8(array)
    if array.ndim == 3:
        if array.shape[2] == 4 and np.ptp(array[:, :, :3]) == 0 and np.ptp(array[:, :, 3]) > 0:
            array = array[:, :, 3]
        elif array.shape[2] >= 3:
            # Not a gray conversion: pure red (255, 0, 0) is gray 76 and would vanish at > 127.
            array = array[:, :, :3].max(axis=2)
        else:
            array = array[:, :, 0]
    return (array > 127).astype(np.uint8)


def masks_all_empty(pairs: Iterable[SamplePair]) -> bool:
    """Whether no mask of ``pairs`` has an object pixel; stops at the first mask that has one.

    A healthy dataset costs one mask decode; unreadable masks are left to the bad-sample checks.
    """
    for pair in pairs:
        try:
            if read_mask(pair.mask).any():
                return False
        except DatasetError:
            continue
    return True


def swapped_sides_problem(image_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> str | None:
    """Describe a mask whose width and height are swapped relative to its image, at any scale.

    Swapped means the mask's aspect ratio is the image's inverted (within pixel rounding) and
    not the image's own, so square pairs and plain rescales (a half-size mask) are not swapped.

    Args:
        image_shape: the image's ``(H, W, ...)``.
        mask_shape: the mask's ``(H, W, ...)``.

    Returns:
        e.g. ``"the mask is 300x400 but its image is 400x300 (width x height): width and height
        are swapped"``, or None.
    """
    (height, width), (mask_height, mask_width) = image_shape[:2], mask_shape[:2]
    tolerance = (height + width) / 2  # |rounding| <= 0.5 on each side of the scaled mask
    inverted = abs(mask_height * height - mask_width * width) <= tolerance
    same = abs(mask_height * width - mask_width * height) <= tolerance
    if not inverted or same:
        return None
    return (f"the mask is {mask_width}x{mask_height} but its image is {width}x{height} (width x height): "
            "width and height are swapped")


def find_unreadable(pairs: Iterable[SamplePair]) -> list[tuple[SamplePair, str]]:
    """Find bad pairs before training, reading only each file's ends and header.

    Bad: an image or mask file that is empty, truncated or has no image header Pillow knows
    (e.g. text saved as ``.jpg``), or a mask whose width and height are swapped relative to its image (:func:`swapped_sides_problem`). Meant for
    ``--skip-bad-samples``: fast enough to run over COD10K before training.

    Returns:
        (pair, problem) for every bad pair, in input order; the problem names the file.
    """
    bad = []
    for pair in pairs:
        problem = None
        for path in (pair.image, pair.mask):
            problem = _probe(path)
            if problem is not None:
                problem = f"{path}: {problem}"
                break
        if problem is None:
            sizes = _header_size(pair.image), _header_size(pair.mask)
            unknown = [path for path, size in zip((pair.image, pair.mask), sizes) if size is None]
            swapped = swapped_sides_problem(*sizes) if not unknown else None
            problem = (f"{unknown[0]}: not an image (no known image header)" if unknown
                       else f"{pair.mask}: {swapped}" if swapped else None)
        if problem is not None:
            bad.append((pair, problem))
    return bad


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` from the file's header (Pillow decodes no pixels here), or None when unknown."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - a probe: decoding errors are reported when the file is read
        return None
    return height, width


def _probe(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_PNG_START))
            size = handle.seek(0, 2)
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except OSError as error:
        return error.strerror or "cannot be opened"
    if size == 0:
        return "the file is empty"
    # Rebuild a minimal byte string with the same head and tail for truncation_problem.
    return truncation_problem(head + tail if size > len(head) + len(tail) else tail)
