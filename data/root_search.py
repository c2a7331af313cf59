"""Find the dataset root near a path that is not one (a parent folder, CAMO's ``Images/``, a split folder),
so the error can name the folder to pass. Cheap by construction: two levels down or up, a bounded listing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

# A folder with more entries than this is not listed (an image folder, a big tree), and at most
# SEARCH_LISTINGS folders are listed in one search: a wrong path under /kaggle/input answers at once.
SEARCH_ENTRIES = 64
SEARCH_LISTINGS = 150


@dataclass(frozen=True)
class RootShape:
    """What a root holds, as folder names (matched case-insensitively): image and mask folders, or
    split folders holding them."""

    image_names: Tuple[str, ...]
    mask_names: Tuple[str, ...]
    split_names: Tuple[str, ...]


class _Listing:
    """Sub-folder listings with a budget."""

    def __init__(self, shape: RootShape) -> None:
        self.shape = shape
        self.left = SEARCH_LISTINGS

    def subfolders(self, folder: Path) -> Optional[List[Path]]:
        """Visible sub-folders of ``folder``, sorted; None when it is unreadable, has more than
        ``SEARCH_ENTRIES`` entries or the budget is spent."""
        if self.left <= 0:
            return None
        self.left -= 1
        found = []
        try:
            with os.scandir(folder) as entries:
                for count, entry in enumerate(entries):
                    if count >= SEARCH_ENTRIES:
                        return None
                    if not entry.name.startswith(".") and entry.is_dir():
                        found.append(Path(entry.path))
        except OSError:
            return None
        return sorted(found)

    def holds_images_and_masks(self, children: Optional[List[Path]]) -> bool:
        children = children or []
        return (any(_named(child, self.shape.image_names) for child in children)
                and any(_named(child, self.shape.mask_names) for child in children))

    def looks_like_root(self, folder: Path) -> bool:
        """Image + mask folders, or a split folder holding them."""
        children = self.subfolders(folder)
        if self.holds_images_and_masks(children):
            return True
        return any(self.holds_images_and_masks(self.subfolders(child))
                   for child in children or [] if _named(child, self.shape.split_names))


def _named(folder: Path, names: Tuple[str, ...]) -> bool:
    return folder.name.lower() in {name.lower() for name in names}


def search_roots_near(path: Path, shape: RootShape,
                      layout_of: Callable[[Path], Optional[str]]) -> Tuple[str, List[Tuple[Path, str]]]:
    """Dataset roots near ``path``, which is not one.

    Args:
        path: the folder given (it may be missing: then its nearest existing ancestor, at most two
            levels up, is where the search starts).
        shape: the folder names a root holds (a cheap first look).
        layout_of: the layout name of a root, None for a folder that is not one (the real check,
            run only on folders that passed the first look).

    Returns:
        ``("above", [(root, layout)])``: the highest root one or two levels above ``path``;
        else ``("inside", [(root, layout), ...])``: the roots one or two levels below it (a root's own
        sub-folders are not searched); else ``("", [])``.
    """
    listing = _Listing(shape)
    start = next((folder for folder in (path, path.parent, path.parent.parent) if folder.is_dir()), None)
    if start is None:
        return "", []
    ancestors = [folder for folder in (path.parent.parent, path.parent)
                 if folder != path and len(folder.parts) <= len(start.parts)]
    for folder in ancestors:
        layout = layout_of(folder) if listing.looks_like_root(folder) else None
        if layout is not None:
            return "above", [(folder, layout)]
    candidates = []
    for child in listing.subfolders(start) or []:
        if listing.looks_like_root(child):
            candidates.append(child)
        else:
            candidates += [grandchild for grandchild in listing.subfolders(child) or []
                           if listing.looks_like_root(grandchild)]
    inside = [(root, layout) for root in candidates if (layout := layout_of(root)) is not None]
    return ("inside", inside) if inside else ("", [])
