"""Resize cache: decode each image/mask pair once, shrink it to a base size, keep it in RAM or on disk.

Every training sample goes through :meth:`ResizeCache.prepare` (decode, fit the mask to the image, shrink
so the shorter side equals ``base_size``) before the random augmentation. ``--cache none`` runs
that step every time; ``memory`` and ``disk`` memoise its output, so all three modes give
bit-identical tensors and differ only in speed.

Choosing the base size: ``RandomResizedCrop(scale=(0.75, 1))`` keeps crops whose shorter side is
at least about 3/4 of the image's, so a base shorter side of ``4/3 * img_size`` keeps crops at or
above the training size (they are shrunk to it, as they would be from the full-size JPEG).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from data.dataset import SegmentationDataset
from data.layouts import SamplePair

logger = logging.getLogger(__name__)

# Bump when the stored arrays change meaning (e.g. a new interpolation), so old entries miss.
CACHE_FORMAT_VERSION = 2

Arrays = tuple[np.ndarray, np.ndarray]
# Decodes one pair and fits its mask to the image: the work a cache hit saves.
Reader = Callable[[], Arrays]


def base_size_for(img_size: int) -> int:
    """Shorter side of cached images for training at ``img_size``: 4/3 of it, rounded up to 32."""
    return int(math.ceil(img_size * 4 / 3 / 32) * 32)


def shrink_to_base(image: np.ndarray, mask: np.ndarray, base_size: Optional[int]) -> Arrays:
    """Shrink so the shorter side is ``base_size`` (never enlarge; None keeps the full size).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) uint8 in {0, 1}.
        base_size: target shorter side in pixels, or None.

    Returns:
        image (H', W', 3) uint8 and mask (H', W') uint8 with the same aspect ratio.
    """
    height, width = image.shape[:2]
    if base_size is None or min(height, width) <= base_size:
        return image, mask
    scale = base_size / min(height, width)
    size = (max(base_size, round(width * scale)), max(base_size, round(height * scale)))  # (W, H) for cv2
    # INTER_AREA averages the pixels it drops (no aliasing); masks stay binary with nearest.
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    return image, mask


def source_signature(pair: SamplePair) -> np.ndarray:
    """(size, mtime_ns) of the image and mask files; a different value marks an entry stale."""
    image_stat, mask_stat = os.stat(pair.image), os.stat(pair.mask)
    return np.array([image_stat.st_size, image_stat.st_mtime_ns, mask_stat.st_size, mask_stat.st_mtime_ns],
                    dtype=np.int64)


class ResizeCache:
    """``--cache none``: prepare every pair on each call, store nothing.

    Subclasses memoise :meth:`load`. The reader (decode + mask fix) comes from the dataset, which
    keeps its own warnings about mismatched masks.
    """

    mode = "none"

    def __init__(self, base_size: Optional[int]) -> None:
        self.base_size = base_size
        self.hits = 0
        self.misses = 0

    def prepare(self, read: Reader) -> Arrays:
        """Decode and shrink one pair: the work that caching saves."""
        image, mask = read()
        return shrink_to_base(image, mask, self.base_size)

    def load(self, pair: SamplePair, read: Reader) -> Arrays:
        """The prepared arrays of ``pair``; ``read()`` decodes it when they are not cached.

        Returns:
            image (H, W, 3) uint8 and mask (H, W) uint8 in {0, 1}, shrunk to the base size.
        """
        self.misses += 1
        return self.prepare(read)

    def warm(self, items: Iterable[tuple[SamplePair, Reader]], threads: int = 1) -> None:
        """Fill the cache ahead of training from (pair, reader) items (a no-op without a cache)."""


class MemoryResizeCache(ResizeCache):
    """Arrays kept in a dict of this process.

    Each DataLoader worker holds its own copy, so entries a worker adds are not seen by the
    others (and die with a non-persistent worker at the end of the epoch). Call :meth:`warm` in
    the main process before the first loader: workers then share the filled dict copy-on-write
    and never decode again.
    """

    mode = "memory"

    def __init__(self, base_size: Optional[int]) -> None:
        super().__init__(base_size)
        self.entries: dict[str, Arrays] = {}

    def load(self, pair: SamplePair, read: Reader) -> Arrays:
        key = str(pair.image)
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            entry = self.entries[key] = self.prepare(read)
        else:
            self.hits += 1
        return entry

    def warm(self, items: Iterable[tuple[SamplePair, Reader]], threads: int = 1) -> None:
        missing = [(pair, read) for pair, read in items if str(pair.image) not in self.entries]
        # cv2 decodes and resizes without the GIL, so threads overlap the work.
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for (pair, _), entry in zip(missing, pool.map(lambda item: self.prepare(item[1]), missing)):
                self.entries[str(pair.image)] = entry
        total_bytes = sum(image.nbytes + mask.nbytes for image, mask in self.entries.values())
        logger.info("Memory resize cache holds %d samples (%.2f GB)", len(self.entries), total_bytes / 1e9)


class DiskResizeCache(ResizeCache):
    """One raw ``.rc`` file per pair in ``folder``, shared by workers, ranks and later runs.

    An entry is a fixed 64-byte header (magic, the sources' (size, mtime_ns), height, width)
    followed by the image bytes (H*W*3) and the mask bytes (H*W). Raw bytes rather than ``.npz``:
    a hit is one header check and one read into a fresh array, with no zip directory to parse
    (in ``benchmarks/data_pipeline.py`` this took disk from 2.8x to 3.0-3.2x the uncached rate,
    within 4 % of the memory cache).

    The file name hashes the source paths and the base size; an entry whose sources changed is
    rebuilt in place. ``read_only`` folders (a previous session's cache, now a read-only input) are
    looked up after ``folder`` and never written: their misses and stale entries go to ``folder``.
    Entries are written to a temporary file and renamed, so a killed run or two
    workers writing the same entry never leave a partial file; a short, foreign or damaged entry
    is rebuilt rather than raised.
    """

    mode = "disk"
    MAGIC = b"CODRSZ%02d" % CACHE_FORMAT_VERSION
    HEADER = np.dtype([("magic", "S8"), ("signature", "<i8", 4), ("height", "<i8"), ("width", "<i8"), ("pad", "V8")])

    def __init__(self, base_size: Optional[int], folder: str | Path, read_only: Sequence[str | Path] = ()) -> None:
        super().__init__(base_size)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.read_only = [Path(path) for path in read_only if Path(path).is_dir()]
        self.writing = True  # off after a failed write (a full disk), for this process

    def entry_name(self, pair: SamplePair) -> str:
        key = f"{CACHE_FORMAT_VERSION}|{self.base_size}|{Path(pair.image).resolve()}|{Path(pair.mask).resolve()}"
        return f"{hashlib.sha1(key.encode()).hexdigest()[:24]}.rc"

    def entry_path(self, pair: SamplePair) -> Path:
        return self.folder / self.entry_name(pair)

    def load(self, pair: SamplePair, read: Reader) -> Arrays:
        path, signature = self.entry_path(pair), source_signature(pair)
        for folder in (self.folder, *self.read_only):
            entry = self._read_entry(folder / path.name, signature, quiet=folder != self.folder)
            if entry is not None:
                self.hits += 1
                return entry
        self.misses += 1
        image, mask = self.prepare(read)
        if self.writing:
            try:
                self._write_entry(path, image, mask, signature)
            except OSError as error:  # a full disk must not end the run: the cache only saves time
                self.writing = False
                logger.warning("Resize cache: cannot write to %s (%s); training goes on without storing new "
                               "entries", self.folder, error.strerror or error)
        return image, mask

    def warm(self, items: Iterable[tuple[SamplePair, Reader]], threads: int = 1) -> None:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(lambda item: self.load(*item), items))

    def _read_entry(self, path: Path, signature: np.ndarray, quiet: bool = False) -> Optional[Arrays]:
        """The stored arrays, or None when missing, stale or damaged (``quiet``: without the warning,
        for a read-only folder, whose entry is not rebuilt there)."""
        try:
            with open(path, "rb") as file:
                raw_header = file.read(self.HEADER.itemsize)
                header = np.frombuffer(raw_header, dtype=self.HEADER) if len(raw_header) == self.HEADER.itemsize else None
                if header is None or header["magic"][0] != self.MAGIC:
                    if quiet:
                        return None
                    logger.warning("Rebuilding resize-cache entry %s (not a format-%d entry)", path,
                                   CACHE_FORMAT_VERSION)
                    return None
                if not np.array_equal(header["signature"][0], signature):
                    return None  # the source changed since the entry was written
                height, width = int(header["height"][0]), int(header["width"][0])
                pixels = height * width
                # Check the length before allocating: a damaged size field must not ask for terabytes.
                complete = (height > 0 and width > 0
                            and os.fstat(file.fileno()).st_size == self.HEADER.itemsize + 4 * pixels)
                if complete:
                    payload = np.empty(pixels * 4, dtype=np.uint8)
                    complete = file.readinto(payload) == payload.nbytes
        except FileNotFoundError:
            return None
        except OSError as error:
            if not quiet:
                logger.warning("Rebuilding unreadable resize-cache entry %s (%s)", path, error)
            return None
        if not complete:
            if quiet:
                return None
            logger.warning("Rebuilding resize-cache entry %s (wrong length)", path)
            return None
        return payload[: pixels * 3].reshape(height, width, 3), payload[pixels * 3 :].reshape(height, width)

    def _write_entry(self, path: Path, image: np.ndarray, mask: np.ndarray, signature: np.ndarray) -> None:
        header = np.zeros(1, dtype=self.HEADER)
        header["magic"], header["signature"] = self.MAGIC, signature
        header["height"], header["width"] = image.shape[:2]
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(header.tobytes())
                file.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
                file.write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
            os.replace(temporary, path)  # atomic: readers see the old entry or the whole new one
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def build_cache(mode: str, base_size: Optional[int], folder: str | Path | None = None,
                read_only: Sequence[str | Path] = ()) -> ResizeCache:
    """Create the resize cache for ``--cache``.

    Args:
        mode: ``none``, ``memory`` or ``disk``.
        base_size: shorter side of prepared images (see :func:`base_size_for`); None keeps full size.
        folder: where disk entries live (required for ``disk``, ignored otherwise).
        read_only: folders of earlier disk entries that are read but never written (``disk`` only).

    Returns:
        A :class:`ResizeCache`.
    """
    # The modes' one list is engine.config's CACHE_MODES (data does not import engine); these build them.
    builders = {"none": lambda: ResizeCache(base_size), "memory": lambda: MemoryResizeCache(base_size),
                "disk": lambda: DiskResizeCache(base_size, folder, read_only)}
    if mode not in builders:
        raise ValueError(f"cache mode {mode!r} is unknown; choose one of {', '.join(builders)}")
    if mode == "disk" and folder is None:
        raise ValueError("the disk resize cache needs a folder")
    return builders[mode]()


class CachedSegmentationDataset(SegmentationDataset):
    """A :class:`SegmentationDataset` whose decoded, shrunk arrays come through a :class:`ResizeCache`.

    Augmentation is unchanged and seeded as in the parent, so the output depends only on
    (seed, epoch, index, base size), never on the cache mode.
    """

    def __init__(self, pairs, transform=None, seed: int = 0, cache: Optional[ResizeCache] = None,
                 skip_bad: bool = False) -> None:
        """Args:
        pairs, transform, seed, skip_bad: as for :class:`SegmentationDataset`.
        cache: from :func:`build_cache`; None behaves like ``build_cache("none", None)``.
        """
        super().__init__(pairs, transform, seed, skip_bad)
        self.cache = cache if cache is not None else ResizeCache(None)

    def _reader(self, index: int) -> Reader:
        return lambda: SegmentationDataset.load_arrays(self, index)

    def load_arrays(self, index: int) -> Arrays:
        """Returns image (H, W, 3) uint8 and mask (H, W) uint8 in {0, 1} at the base size."""
        return self.cache.load(self.pairs[index], self._reader(index))

    def warm(self, threads: int = 1) -> None:
        """Fill the cache from this process; call before DataLoader workers start.

        Args:
            threads: decoding threads (e.g. ``--num-workers``).
        """
        self.cache.warm([(pair, self._reader(index)) for index, pair in enumerate(self.pairs)], threads)
