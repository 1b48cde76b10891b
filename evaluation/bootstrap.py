"""The paired bootstrap of Table 1: is a pretrained init's mean Dice above scratch's, beyond case noise?

Both inits are scored on the same test cases, so the comparison is paired by case. Each init may
have several replicates (fine-tuning runs that differ in their seeds); they are averaged per case
first, so a case is one unit whatever the number of replicates, and only cases are resampled:

    d[c]      = mean_r pretrained[r, c] - mean_r scratch[r, c]       (per case, replicates averaged)
    estimate  = mean_c d[c]
    interval  = the 2.5th and 97.5th percentiles of mean_c d[c*] over RESAMPLES draws of the cases
                c* with replacement (a fixed seed: the same inputs give the same interval)

Resampling (replicate, case) pairs instead would treat replicates as extra cases: it narrows the
interval as replicates are added although the test set did not grow, and it weighs an init with more
replicates more. The spread between replicates is reported beside the interval (mean ± sd), not
mixed into it. Numpy only, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class PairedInterval:
    """Pretrained minus scratch: the mean difference over cases and its percentile interval (fractions
    of Dice, like the summaries), with what it was computed from."""
    difference: float
    low: float
    high: float
    cases: int
    resamples: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def case_means(scores, what: str = "scores") -> np.ndarray:
    """[replicates, cases] per-case scores -> [cases], the mean over replicates; a 1-D input is one
    replicate. Refuses NaN (a case without a score has no place in a paired comparison)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"{what}: expected [replicates, cases] with at least one of each, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what}: NaN or infinite per-case scores; leave those cases out of both inits")
    return scores.mean(axis=0)


def paired_bootstrap(pretrained, scratch, resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = LEVEL) -> PairedInterval:
    """The paired bootstrap interval of mean(pretrained) - mean(scratch).

    pretrained [R1, C], scratch [R2, C]: per-case scores, columns paired by case (same case order);
    R1 and R2 may differ. Replicates are averaged per case, then the C per-case differences are
    resampled `resamples` times with replacement."""
    ours, theirs = case_means(pretrained, "pretrained"), case_means(scratch, "scratch")
    if ours.shape != theirs.shape:  # checked, not broadcast: one case against many is no pairing
        raise ValueError(f"pretrained scores {ours.size} cases and scratch {theirs.size}: pair them by case")
    diff = ours - theirs  # [C]
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level {level} must be in (0, 1) and resamples {resamples} at least 1")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, diff.size, size=(resamples, diff.size))  # [resamples, C] case indices
    means = diff[draws].mean(axis=1)                                  # [resamples]
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return PairedInterval(float(diff.mean()), float(low), float(high), int(diff.size), resamples, level)
