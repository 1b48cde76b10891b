"""Paired comparisons over seeds (evaluation/seeds.py): known answers, and what widens or narrows them."""
import math

import numpy as np
import pytest

from evaluation.seeds import compare_over_seeds, t_interval


def test_t_interval_is_students():
    low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert low == pytest.approx(2 - half, abs=1e-5) and high == pytest.approx(2 + half, abs=1e-5)
    assert t_interval([0.5]) == (-math.inf, math.inf)  # one seed: no spread measured


def test_a_constant_lead_is_exact_and_excludes_zero():
    b = np.random.default_rng(0).uniform(0, 1, (5, 10))
    c = compare_over_seeds(b + 0.03, b)
    assert c.estimate == pytest.approx(0.03) and c.positive == 5 and c.seeds == 5 and c.cases == 10
    assert c.t_low == pytest.approx(0.03) and c.boot_high == pytest.approx(0.03) and c.excludes_zero


def test_a_lead_carried_by_one_seed_is_not_shown():
    b = np.zeros((3, 8))
    a = b.copy()
    a[0] += 0.30          # one replicate far ahead, the others slightly behind
    a[1:] -= 0.01
    c = compare_over_seeds(a, b)
    assert c.by_seed == pytest.approx((0.30, -0.01, -0.01)) and c.positive == 1
    assert c.t_low < 0 < c.t_high and not c.excludes_zero
    assert c.boot_low == pytest.approx(-0.01) and c.boot_high == pytest.approx(0.30)  # all-one-seed draws


def test_case_noise_within_seeds_widens_only_the_bootstrap():
    rng = np.random.default_rng(1)
    b = rng.uniform(0, 1, (4, 12))
    steady = compare_over_seeds(b + 0.05, b)
    noise = rng.normal(0, 0.2, (1, 12)) - rng.normal(0, 0.2, (1, 12)).mean()
    noisy = compare_over_seeds(b + 0.05 + noise, b)  # the same case noise in every seed: seeds agree
    assert noisy.t_high - noisy.t_low == pytest.approx(0, abs=1e-12)
    assert noisy.boot_high - noisy.boot_low > steady.boot_high - steady.boot_low + 0.05


@pytest.mark.parametrize("a,b", [(np.zeros((2, 3)), np.zeros((3, 3))), (np.zeros(3), np.zeros(3)),
                                 (np.full((2, 2), np.nan), np.zeros((2, 2)))])
def test_unpaired_or_missing_scores_are_refused(a, b):
    with pytest.raises(ValueError):
        compare_over_seeds(a, b)
