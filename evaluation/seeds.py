"""Paired comparisons over seeds: is arm A above arm B beyond the spread between replicates?

The unit of replication is the seed (a replicate: pretraining seed k, fine-tuning seed k, labelled
subset k), and every replicate of both arms is scored on the same test cases. From per-case scores
a [S, C] and b [S, C] (row k = replicate k of each arm, columns = the same cases):

    D[k, c]       = a[k, c] - b[k, c]
    d[k]          = mean_c D[k, c]                    the replicate pair's difference
    estimate      = mean_k d[k]
    t-interval    = estimate +- t(0.975, S-1) * sd(d) / sqrt(S)            (seeds only; S >= 2)
    sign count    = #{k : d[k] > 0} of S
    two-level     = percentiles of mean_k* mean_c* D[k*, c*]: the seeds drawn with replacement, then
    bootstrap       within each drawn seed the cases, RESAMPLES times (a fixed seed)

The t-interval says whether the lead holds across seeds; the two-level bootstrap adds the case
sampling within each seed. `evaluation.bootstrap` (cases only, replicates averaged) answers the
narrower question of Table 1. Numpy and scipy only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from .bootstrap import LEVEL, RESAMPLES, SEED


@dataclass(frozen=True)
class SeedComparison:
    """A minus B over paired seeds, in fractions of Dice (as the summaries)."""
    estimate: float
    by_seed: tuple[float, ...]
    t_low: float
    t_high: float
    positive: int
    boot_low: float
    boot_high: float
    seeds: int
    cases: int

    @property
    def excludes_zero(self) -> bool:
        """Both intervals on the same side of 0 (the t-interval needs two seeds)."""
        above = self.t_low > 0 and self.boot_low > 0
        below = self.t_high < 0 and self.boot_high < 0
        return above or below

    def as_dict(self) -> dict:
        return {**asdict(self), "by_seed": list(self.by_seed), "excludes_zero": self.excludes_zero}


def paired_matrix(a, b) -> np.ndarray:
    """D = a - b for [S, C] scores paired by row (seed) and column (case); refuses what cannot pair."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape or min(a.shape) < 1:
        raise ValueError(f"pair [seeds, cases] scores of the same shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("NaN or infinite per-case scores; leave those cases out of both arms")
    return a - b


def t_interval(values, level: float = LEVEL) -> tuple[float, float]:
    """Student's t-interval of the mean of `values`; (-inf, inf) for fewer than two."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return -math.inf, math.inf
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def two_level_bootstrap(diff: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
                        level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of mean_k* mean_c* D[k*, c*] (seeds, then cases within each seed)."""
    n_seeds, n_cases = diff.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))               # [R, S]
    cases = rng.integers(0, n_cases, size=(resamples, n_seeds, n_cases))      # [R, S, C]
    means = diff[seeds[:, :, None], cases].mean(axis=(1, 2))                  # [R]
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def compare_over_seeds(a, b, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> SeedComparison:
    """A minus B: per-seed differences, their t-interval, the sign count and the two-level bootstrap."""
    diff = paired_matrix(a, b)
    by_seed = diff.mean(axis=1)
    t_low, t_high = t_interval(by_seed, level)
    boot_low, boot_high = two_level_bootstrap(diff, resamples, seed, level)
    return SeedComparison(float(by_seed.mean()), tuple(float(d) for d in by_seed), t_low, t_high,
                          int((by_seed > 0).sum()), boot_low, boot_high, diff.shape[0], diff.shape[1])
