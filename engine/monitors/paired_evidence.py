"""Paired differences between two epochs' per-image scores, and the per-run false-alarm budget.

The validation images are the same every epoch, so the change of a score between two epochs is
measured image by image: ``d_i = after_i - before_i``. Its mean over the ``N`` images has the
standard error ``sd(d) / sqrt(N)``; a change within a few standard errors is what another draw
of ``N`` validation images could have shown, not evidence of anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

# The design false-alarm rate per run: the chance that validation noise alone raises at least one
# health issue anywhere in a healthy run, split over every test the run makes (weighted Bonferroni).
RUN_FALSE_ALARM_RATE = 0.05
# The share of that rate spent on one test, the first no-signal test (epoch 2): it decides early whether
# a whole run is wasted, and healthy runs sit far on its safe side; the other tests share the rest evenly.
EARLY_SHARE = 0.2
# Below this many validation images the standard error itself is too noisy to judge by.
MIN_IMAGES = 20


@dataclass(frozen=True)
class PairedDifference:
    """``mean(after - before)`` over ``images`` paired images and its standard error."""

    mean: float
    se: float
    images: int

    @property
    def z(self) -> float:
        """The mean in standard errors (0 when nothing changed; +-inf when every image moved alike)."""
        if self.se > 0:
            return self.mean / self.se
        return 0.0 if self.mean == 0 else math.copysign(math.inf, self.mean)

    def upper(self, z: float) -> float:
        """The one-sided upper confidence bound at ``z`` standard errors."""
        return self.mean + z * self.se

    def describe(self, unit: str = "", digits: int = 4) -> str:
        """``-0.0412 +- 0.0081 (SE, 100 images)`` (``unit`` after both numbers)."""
        return f"{self.mean:+.{digits}f}{unit} +- {self.se:.{digits}f}{unit} (SE, {self.images} images)"


def paired_difference(after: torch.Tensor, before: torch.Tensor) -> PairedDifference:
    """Paired difference of two ``(N,)`` score vectors of the same images (computed in float64)."""
    if after.shape != before.shape or after.dim() != 1:
        raise ValueError(f"paired scores need two (N,) vectors of the same images, got {tuple(after.shape)} "
                         f"and {tuple(before.shape)}")
    differences = after.double() - before.double()
    images = differences.numel()
    se = float(differences.std(unbiased=True)) / math.sqrt(images) if images > 1 else math.inf
    return PairedDifference(float(differences.mean()), se, images)


@dataclass(frozen=True)
class FalseAlarmBudget:
    """The critical ``z`` of each test, so that a whole run stays within ``run_rate`` false alarms.

    ``early_share`` of the rate goes to the one early test (``early_z``); the run's ``tests`` split
    the rest evenly (``z``; the early test is counted among them too, which only makes it stricter).
    The shares add up to ``run_rate``, so the run's rate holds (Bonferroni).

    Args:
        tests: how many one-sided tests the run makes (rules x judged epochs, plus the epoch-1 check).
        run_rate: the design chance of any false alarm in a healthy run.
        early_share: the share of ``run_rate`` given to the early test.
    """

    tests: int
    run_rate: float = RUN_FALSE_ALARM_RATE
    early_share: float = EARLY_SHARE

    @property
    def per_test(self) -> float:
        return self.run_rate * (1.0 - self.early_share) / max(self.tests, 1)

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(1.0 - self.per_test)

    @property
    def early_z(self) -> float:
        if self.early_share <= 0.0:
            return math.inf  # no early share: the early test never fires on its own budget
        return NormalDist().inv_cdf(1.0 - self.run_rate * self.early_share)

    def describe(self) -> str:
        return (f"false-alarm budget {self.run_rate:.0%} per run: the early no-signal test needs z <= "
                f"-{self.early_z:.2f}, each of the run's {self.tests} tests |z| >= {self.z:.2f}")
