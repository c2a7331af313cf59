"""The bottom of configuration: its error type and the parsers of single values (durations, epoch
selections). Everything else in ``engine`` may import this; it imports only the standard library."""
from __future__ import annotations

import re
from typing import Callable, List, Tuple

EVAL_EPOCHS_OFF = ("none", "off", "")


class ConfigError(ValueError):
    """A user error in flags or YAML; its message is one line naming the problem and the fix."""


def eval_epochs_disabled(text: str) -> bool:
    """``--eval-epochs`` values that switch the post-epoch diagnosis off."""
    return str(text).strip().lower() in EVAL_EPOCHS_OFF


def parse_duration(text: str, flag: str = "--time-limit") -> float:
    """``'11.5h'``, ``'90m'`` or ``'3600s'`` -> seconds.

    The unit is required: a bare ``11.5`` could mean hours (what a Kaggle user means) or seconds
    (what it meant here once, ending a 12-hour plan after one step), so it is refused with the
    three ways to write it, reading the number as hours.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([hms]?)\s*", str(text))
    if not match:
        raise ConfigError(f"{flag} {text!r} is not a duration; write e.g. 11.5h, 90m or 3600s")
    value, unit = float(match.group(1)), match.group(2)
    if not unit:
        raise ConfigError(f"{flag} {match.group(1)} has no unit: write {value:g}h, {value * 60:g}m or "
                          f"{value * 3600:g}s")
    return value * {"h": 3600.0, "m": 60.0, "s": 1.0}[unit]


def parse_epoch_selection(text: str) -> Callable[[int], bool]:
    """``"2+"`` (epoch 2 on), ``"1,5,10"``, ``"3-8"``, combinations, or ``"none"`` -> predicate on epochs."""
    text = str(text).strip().lower()
    if eval_epochs_disabled(text):
        return lambda epoch: False
    tests: List[Callable[[int], bool]] = []
    try:
        for item in text.split(","):
            item = item.strip()
            if item.endswith("+"):
                tests.append(lambda epoch, first=int(item[:-1]): epoch >= first)
            elif "-" in item:
                low, high = (int(part) for part in item.split("-", 1))
                tests.append(lambda epoch, low=low, high=high: low <= epoch <= high)
            else:
                tests.append(lambda epoch, only=int(item): epoch == only)
    except ValueError:
        raise ValueError(f"--eval-epochs {text!r} is not an epoch selection; write e.g. 2+, 1,5,10, 3-8 or none") from None
    return lambda epoch: any(test(epoch) for test in tests)


def parse_scales(text: str, flag: str = "--train-scales") -> Tuple[float, ...]:
    """``"0.75,1,1.25"`` -> ``(0.75, 1.0, 1.25)``: sorted, without repeats; each in (0, 2].

    Raises:
        ConfigError: an empty list, a value that is not a number, or one outside (0, 2].
    """
    items = [item.strip() for item in str(text).strip().strip("[]()").split(",") if item.strip()]  # YAML lists too
    try:
        scales = tuple(sorted({float(item) for item in items}))
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a list of numbers; write e.g. 0.75,1,1.25 (1: one scale, off)") from None
    if not scales or not all(0 < scale <= 2 for scale in scales):
        raise ConfigError(f"{flag} {text!r}: each scale must be a number in (0, 2] times --img-size, e.g. 0.75,1,1.25")
    return scales


def training_sides(img_size: int, scales: Tuple[float, ...]) -> Tuple[int, ...]:
    """The distinct batch sides of ``scales`` x ``img_size``, rounded to whole pixels, ascending."""
    return tuple(sorted({int(round(img_size * scale)) for scale in scales}))
