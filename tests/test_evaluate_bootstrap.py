"""evaluation.bootstrap: the paired bootstrap of pretrained minus scratch, on answers known in advance."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.bootstrap import RESAMPLES, case_means, paired_bootstrap

# per-case Dice that differ a lot between cases, as real test cases do: an unpaired bootstrap (the two
# inits resampled independently) would give a wide interval on these even when the inits are equal
CASES = np.linspace(0.2, 0.9, 12)


def width(interval) -> float:
    return interval.high - interval.low


def test_identical_runs_give_zero_difference_and_a_narrow_interval():
    runs = np.stack([CASES, CASES[::-1], CASES ** 2])  # three replicates, each case its own level
    interval = paired_bootstrap(runs, runs.copy())
    assert interval.low <= 0 <= interval.high and not interval.excludes_zero
    assert interval.difference == 0 and width(interval) == 0  # paired: case levels cancel exactly
    assert interval.cases == 12 and interval.resamples == RESAMPLES


def test_a_constant_shift_gives_an_interval_at_the_shift():
    scratch = np.stack([CASES, CASES + 0.01])
    interval = paired_bootstrap(scratch + 0.05, scratch)
    assert interval.difference == pytest.approx(0.05)                 # pretrained minus scratch, not the reverse
    assert interval.low == pytest.approx(0.05) and interval.high == pytest.approx(0.05)
    assert interval.excludes_zero
    worse = paired_bootstrap(scratch - 0.05, scratch)
    assert worse.high == pytest.approx(-0.05) and worse.excludes_zero  # below 0 excludes it too


def test_replicates_are_averaged_before_cases_are_resampled():
    """Replicate noise that cancels within each case: averaged first, every case differs by exactly d
    (an interval of zero width); resampled as (replicate, case) pairs, the noise would widen it."""
    d, noise = 0.03, np.array([[0.2], [-0.1], [-0.1]]) * np.sign(CASES - 0.5)  # [3, 12], sums to 0 per case
    pretrained = CASES + d + noise
    interval = paired_bootstrap(pretrained, CASES)
    assert interval.difference == pytest.approx(d) and width(interval) == pytest.approx(0, abs=1e-12)

    pairs = (pretrained - CASES).ravel()  # the wrong unit: 36 replicate-case differences
    draws = np.random.default_rng(0).integers(0, pairs.size, size=(RESAMPLES, pairs.size))
    wrong = np.percentile(pairs[draws].mean(axis=1), [2.5, 97.5])
    assert wrong[1] - wrong[0] > 0.05  # what this test would see if replicates were not averaged first


def test_unequal_replicate_counts_weigh_each_init_equally():
    pretrained = np.stack([CASES + 0.10, CASES + 0.00, CASES + 0.02])  # mean shift 0.04
    scratch = CASES[None, :]
    assert paired_bootstrap(pretrained, scratch).difference == pytest.approx(0.04)
    # pooling all four runs' cases into one mean would give (0.12 / 4) = 0.03 instead


def test_interval_width_matches_the_standard_error():
    """For many cases the percentile interval is about mean +- 1.96 sd / sqrt(n) (not 1.645: a 90 % one)."""
    rng = np.random.default_rng(7)
    diff = rng.normal(0.02, 0.05, 200)
    interval = paired_bootstrap(CASES.mean() + diff, np.full(200, CASES.mean()))
    half = 1.96 * diff.std() / np.sqrt(diff.size)
    assert width(interval) / 2 == pytest.approx(half, rel=0.06)
    assert (interval.low + interval.high) / 2 == pytest.approx(diff.mean(), abs=half / 5)
    assert interval.excludes_zero  # 0.02 is about 5.7 standard errors from 0


def test_the_seed_fixes_the_interval():
    rng = np.random.default_rng(3)
    pretrained, scratch = rng.random((3, 10)), rng.random((2, 10))
    first, again = paired_bootstrap(pretrained, scratch), paired_bootstrap(pretrained, scratch)
    assert first == again
    assert paired_bootstrap(pretrained, scratch, seed=1) != first


def test_cases_must_pair():
    with pytest.raises(ValueError, match="pair them by case"):
        paired_bootstrap(np.ones((2, 5)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="pair them by case"):  # one case is not broadcast against five
        paired_bootstrap(np.ones((2, 5)), np.ones((2, 1)))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.array([[0.5, np.nan]]), np.array([[0.5, 0.4]]))
    assert case_means([0.1, 0.3]).tolist() == [0.1, 0.3]  # one replicate may be given as [cases]
