"""Paired differences and the per-run false-alarm budget."""
import math
from statistics import NormalDist

import pytest
import torch

from engine.monitors.paired_evidence import FalseAlarmBudget, PairedDifference, paired_difference


def test_paired_difference_is_the_mean_and_standard_error_of_the_per_image_changes():
    before = torch.tensor([0.2, 0.5, 0.7, 0.9])
    after = torch.tensor([0.3, 0.5, 0.9, 0.95])
    change = paired_difference(after, before)
    differences = [0.1, 0.0, 0.2, 0.05]
    mean = sum(differences) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3)
    assert change.mean == pytest.approx(mean) and change.se == pytest.approx(sd / 2) and change.images == 4
    assert change.z == pytest.approx(mean / (sd / 2))
    assert change.upper(1.0) == pytest.approx(mean + sd / 2)
    assert "+0.0875 +- " in change.describe() and "(SE, 4 images)" in change.describe()


def test_pairing_removes_the_spread_between_images():
    """Images differ far more from each other than from themselves a epoch later: paired, a small
    shift every image shares is clear; the unpaired spread would hide it."""
    generator = torch.Generator().manual_seed(0)
    before = torch.rand(100, generator=generator)
    after = before + 0.01 + 0.002 * torch.randn(100, generator=generator)
    assert paired_difference(after, before).z > 20
    assert float(before.std()) / 10 > 0.01  # the unpaired standard error is larger than the shift


def test_unchanged_and_uniform_changes():
    scores = torch.tensor([0.125, 0.5, 0.75])  # exact in binary: +0.25 moves each image by exactly 0.25
    assert paired_difference(scores, scores).z == 0.0
    assert paired_difference(scores + 0.25, scores).z == math.inf  # every image moved alike
    assert PairedDifference(-0.1, 0.0, 3).z == -math.inf


def test_scores_of_different_images_are_refused():
    with pytest.raises(ValueError, match="same images"):
        paired_difference(torch.zeros(5), torch.zeros(6))


@pytest.mark.parametrize("tests", [1, 10, 35, 300])
def test_the_budget_splits_the_run_rate_over_its_tests(tests):
    budget = FalseAlarmBudget(tests)
    early = 1 - NormalDist().cdf(budget.early_z)
    assert 1 - NormalDist().cdf(budget.z) == pytest.approx(budget.per_test)
    assert early + tests * budget.per_test == pytest.approx(0.05)  # the shares add up to the run's rate
    assert early == pytest.approx(0.05 * budget.early_share)
    assert FalseAlarmBudget(tests * 2).z > budget.z and FalseAlarmBudget(tests * 2).early_z == budget.early_z
    assert FalseAlarmBudget(tests, early_share=0.0).per_test == pytest.approx(0.05 / tests)
    assert FalseAlarmBudget(tests, early_share=0.0).early_z == float("inf")


def share_of_runs_with_an_alarm(budget, runs=400, early_shift=0.0, later_shift=0.0, seed=1):
    """Simulated runs of the early test and ``budget.tests`` later ones, each a paired difference over
    100 images of unit spread; the shifts move every image of the early test / of one later test."""
    generator = torch.Generator().manual_seed(seed)
    alarms = 0
    for _ in range(runs):
        scores = torch.randn(budget.tests + 1, 100, generator=generator, dtype=torch.float64)
        scores[0] += early_shift
        scores[1] += later_shift  # one real change in the run, e.g. one epoch's regression
        z = [paired_difference(row, torch.zeros(100, dtype=torch.float64)).z for row in scores]
        alarms += z[0] >= budget.early_z or any(value >= budget.z for value in z[1:])
    return alarms / runs


def test_a_budget_holds_under_pure_noise():
    """The early test and 46 others of pure validation noise per run (a demo run's count), 400 runs:
    the share of runs with any false alarm stays near the design 5 %: Bonferroni bounds it by 5 % for
    exact normal z, the tests are independent, so it is close to that bound, and the standard error
    estimated from 100 images fattens the tails a little (t with 99 degrees of freedom: about 6 %).
    A rule far stricter than its budget, or one that never fires, falls below the lower bound."""
    rate = share_of_runs_with_an_alarm(FalseAlarmBudget(46))
    assert 0.025 <= rate <= 0.08


@pytest.mark.parametrize("early_shift, later_shift", [(0.0, 0.48), (0.4, 0.0)])
def test_a_real_change_is_flagged_in_most_runs(early_shift, later_shift):
    """Power. A shift of d standard deviations on 100 images has z near 10 d: 4.8 for the later tests,
    whose threshold is 3.13 (46 tests), 4.0 for the early one (threshold 2.33); both lie 1.67 above
    their threshold, so the rule fires in Phi(1.67) = 95 % of runs (a little fewer: the standard
    error is estimated). A rule that never fires, or a threshold far too high, fails here."""
    budget = FalseAlarmBudget(46)
    assert budget.z == pytest.approx(3.1315, abs=1e-4) and budget.early_z == pytest.approx(2.3263, abs=1e-4)
    assert share_of_runs_with_an_alarm(budget, early_shift=early_shift, later_shift=later_shift) >= 0.85
