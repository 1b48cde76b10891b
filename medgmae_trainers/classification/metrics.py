"""AUROC per class, macro AUROC, a case-resampling bootstrap interval, and thresholds from another set.

AUROC is the Mann-Whitney statistic on average ranks (ties count one half), computed for all classes
at once so that a 1000-replicate bootstrap over thousands of cases takes seconds; the tests compare
it with scikit-learn's `roc_auc_score`. A class whose labels are all equal in a set has no AUROC
(NaN); the macro mean is over the classes that have one.

Thresholds are never chosen on the set they are scored on: `youden_thresholds` picks them on a
separate set (e.g. the training cases' predictions), `threshold_metrics` applies them.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """y, s [N, K] (0/1 labels, scores) -> AUROC [K], NaN where a class has only one label value."""
    y = np.asarray(y, bool)
    s = np.asarray(s, np.float64)
    if y.ndim == 1:
        return auroc(y[:, None], s[:, None])
    ranks = rankdata(s, axis=0)  # average ranks over ties
    pos = y.sum(axis=0).astype(np.float64)
    neg = y.shape[0] - pos
    rank_sum = np.where(y, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    out[(pos == 0) | (neg == 0)] = np.nan
    return out


def macro(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def bootstrap_auroc(y: np.ndarray, s: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap over cases: each replicate draws N cases with replacement (one index set for
    every class, so the macro interval accounts for the classes' correlation).

    Returns per-class and macro (low, high) and the replicate values; replicates in which a class has
    one label value only leave that class out of that replicate."""
    y, s = np.asarray(y), np.asarray(s)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))
    per_class = np.stack([auroc(y[i], s[i]) for i in idx])  # [B, K]
    with np.errstate(invalid="ignore"):
        macro_reps = np.array([macro(r) for r in per_class])
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(values):
        values = values[np.isfinite(values)]
        return [float(v) for v in np.percentile(values, q)] if values.size else [float("nan")] * 2

    return {"per_class": [interval(per_class[:, k]) for k in range(y.shape[1])],
            "macro": interval(macro_reps), "n_boot": n_boot, "seed": seed, "level": level,
            "macro_replicates": macro_reps}


def youden_thresholds(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per class, the score threshold maximising sensitivity + specificity - 1 on THIS set (pass the
    set the thresholds are chosen on, never the one they are scored on). NaN for one-valued classes."""
    from sklearn.metrics import roc_curve

    out = np.full(y.shape[1], np.nan)
    for k in range(y.shape[1]):
        if 0 < y[:, k].sum() < y.shape[0]:
            fpr, tpr, thr = roc_curve(y[:, k], s[:, k])
            best = np.argmax(tpr - fpr)
            out[k] = min(thr[best], 1.0)  # roc_curve's first threshold is +inf
    return out


def threshold_metrics(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray) -> dict:
    """Sensitivity, specificity and F1 per class at fixed thresholds (score >= threshold is positive)."""
    y = np.asarray(y, bool)
    pred = np.asarray(s) >= thresholds[None, :]
    tp = (pred & y).sum(0).astype(float)
    fp = (pred & ~y).sum(0).astype(float)
    fn = (~pred & y).sum(0).astype(float)
    tn = (~pred & ~y).sum(0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "f1": 2 * tp / (2 * tp + fp + fn)}
