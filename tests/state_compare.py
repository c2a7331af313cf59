"""Compare two saved states leaf by leaf: tensors, numbers (NaN equals NaN), strings, lengths and keys.

Used by every resume, round-trip and checkpoint-compatibility test, so a resumed run that differs from
a straight one in any value it carries (an optimizer's lr, an early-stopping counter, a health history)
fails, not only one whose tensors differ.
"""
from __future__ import annotations

import fnmatch
import math

import numpy as np
import torch


def _same_tensor(left: torch.Tensor, right: torch.Tensor) -> str | None:
    if left.dtype != right.dtype or left.shape != right.shape:
        return f"{left.dtype}{tuple(left.shape)} != {right.dtype}{tuple(right.shape)}"
    if left.layout != right.layout or left.device != right.device:
        return f"{left.layout}/{left.device} != {right.layout}/{right.device}"
    if torch.equal(left, right):
        return None
    if left.is_floating_point() or left.is_complex():
        both_nan = left.isnan() & right.isnan()
        if bool(((left == right) | both_nan).all()):
            return None
    return "values differ"


def _same_array(left: np.ndarray, right: np.ndarray) -> str | None:
    if left.dtype != right.dtype or left.shape != right.shape:
        return f"{left.dtype}{left.shape} != {right.dtype}{right.shape}"
    equal_nan = left.dtype.kind in "fc"
    return None if np.array_equal(left, right, equal_nan=equal_nan) else "values differ"


def _same_scalar(left, right) -> str | None:
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return None
    return None if left == right else f"{left!r} != {right!r}"


def state_differences(left, right, path: str = "state") -> list[str]:
    """Every place where ``left`` and ``right`` differ, as ``"path: what"`` lines (empty when equal)."""
    if type(left) is not type(right):
        return [f"{path}: {type(left).__name__} != {type(right).__name__}"]
    if isinstance(left, torch.Tensor):
        found = _same_tensor(left, right)
        return [] if found is None else [f"{path}: {found}"]
    if isinstance(left, np.ndarray):
        found = _same_array(left, right)
        return [] if found is None else [f"{path}: {found}"]
    if isinstance(left, dict):
        missing, extra = left.keys() - right.keys(), right.keys() - left.keys()
        found = [f"{path}: keys only on the left {sorted(map(str, missing))}"] if missing else []
        found += [f"{path}: keys only on the right {sorted(map(str, extra))}"] if extra else []
        for key in left.keys() & right.keys():
            found += state_differences(left[key], right[key], f"{path}.{key}")
        return found
    if isinstance(left, (list, tuple)):
        if len(left) != len(right):
            return [f"{path}: length {len(left)} != {len(right)}"]
        found = []
        for index, (a, b) in enumerate(zip(left, right)):
            found += state_differences(a, b, f"{path}[{index}]")
        return found
    found = _same_scalar(left, right)
    return [] if found is None else [f"{path}: {found}"]


def assert_same_state(left, right, path: str = "state", ignore: tuple = ()) -> None:
    """Assert that two states are equal in every leaf; the message lists the first differences.

    ``ignore``: glob patterns of paths that may differ (a run's own folder, wall-clock seconds); each
    caller names them, so what is left out of a comparison is written at the comparison.
    """
    differences = [line for line in state_differences(left, right, path)
                   if not any(fnmatch.fnmatchcase(line.split(": ", 1)[0], pattern) for pattern in ignore)]
    assert not differences, f"{len(differences)} difference(s):\n" + "\n".join(differences[:25])
