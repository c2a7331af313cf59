"""Read images and masks robustly: grayscale, RGBA, palette and 16-bit files; clear errors."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from data.layouts import DatasetError, SamplePair

logger = logging.getLogger(__name__)

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND"
_TAIL_BYTES = 1024


def _unreadable(path: Path, why: str) -> DatasetError:
    return DatasetError(
        f"Cannot read {path}: {why}. Re-download or delete the file, "
        "or pass --skip-bad-samples to skip unreadable files."
    )


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


def _decode(path: str | Path) -> np.ndarray:
    """Decode a file with all channels and its native bit depth; raise DatasetError on failure."""
    path = Path(path)
    try:
        # np.fromfile + imdecode copes with non-ASCII paths that cv2.imread cannot open.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise _unreadable(path, error.strerror or "the file cannot be opened") from error
    problem = truncation_problem(data)
    if problem is not None:
        raise _unreadable(path, problem)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise _unreadable(path, "it is not a decodable image")
    return array


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
    """Read a mask and binarise it at > 127 (after converting colour masks to gray).

    A colour-less RGBA mask (constant colour, varying alpha) uses its alpha channel. A lossless
    (non-JPEG) mask whose only values are exactly 0 and 1 is taken as a 0/1 label map rather than
    an almost-black image (binarising it at 127 would silently erase the object).

    Args:
        path: mask file (any bit depth, gray, RGB or RGBA).

    Returns:
        (H, W) uint8 array in {0, 1}.

    Raises:
        DatasetError: the file is missing, empty, truncated or not an image.
    """
    array = _decode(path)
    lossless = Path(path).suffix.lower() not in {".jpg", ".jpeg"}
    if lossless and array.ndim == 2 and np.array_equal(np.unique(array), [0, 1]):
        logger.debug("%s holds 0/1 labels; treating 1 as foreground", path)
        return array.astype(np.uint8)
    array = _to_uint8(array)
    if array.ndim == 3:
        if array.shape[2] == 4 and np.ptp(array[:, :, :3]) == 0 and np.ptp(array[:, :, 3]) > 0:
            array = array[:, :, 3]
        elif array.shape[2] >= 3:
            array = cv2.cvtColor(array[:, :, :3], cv2.COLOR_BGR2GRAY)
        else:
            array = array[:, :, 0]
    return (array > 127).astype(np.uint8)


def find_unreadable(pairs: Iterable[SamplePair]) -> list[tuple[SamplePair, str]]:
    """Find pairs whose image or mask file is empty or truncated, reading only each file's ends.

    Meant for ``--skip-bad-samples``: fast enough to run over COD10K before training.

    Returns:
        (pair, problem) for every bad pair, in input order.
    """
    bad = []
    for pair in pairs:
        for path in (pair.image, pair.mask):
            problem = _probe(path)
            if problem is not None:
                bad.append((pair, f"{path}: {problem}"))
                break
    return bad


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
