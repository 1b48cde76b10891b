"""Registration metrics: Dice per structure, Jacobian determinant of the deformation, endpoint error.

Plain numpy, so they are easy to check against independent implementations (the tests compare them
with MONAI's DiceMetric, SimpleITK's DisplacementFieldJacobianDeterminantFilter and closed forms).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice 2|P∩R| / (|P|+|R|) of each label; NaN where the label is in neither map (it is not scored)."""
    out = {}
    for lab in labels:
        p, r = pred == lab, ref == lab
        denom = int(p.sum()) + int(r.sum())
        out[int(lab)] = float(2.0 * np.logical_and(p, r).sum() / denom) if denom else float("nan")
    return out


def mean_dice(per_label: dict[int, float]) -> float:
    """Mean over the scored labels (NaN entries skipped); NaN if none was scored."""
    vals = [v for v in per_label.values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def jacobian_determinant(ddf: np.ndarray) -> np.ndarray:
    """det(I + ∇u) of x -> x + u(x) for `ddf` [3, D, H, W] in voxels; central differences inside,
    one-sided at the border (numpy.gradient). Returns [D, H, W].

    In voxel units the determinant equals the physical one for any spacing: I + S∇uS⁻¹ is similar
    to I + ∇u.
    """
    if ddf.ndim != 4 or ddf.shape[0] != 3:
        raise ValueError(f"ddf must be [3, D, H, W], got {ddf.shape}")
    grads = np.stack([np.stack(np.gradient(ddf[i].astype(np.float64)), axis=0) for i in range(3)])  # [3 comp, 3 axis, ...]
    j = grads + np.eye(3)[:, :, None, None, None]
    return (j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
            - j[0, 1] * (j[1, 0] * j[2, 2] - j[1, 2] * j[2, 0])
            + j[0, 2] * (j[1, 0] * j[2, 1] - j[1, 1] * j[2, 0]))


def nonpositive_jacobian_percent(ddf: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage of voxels (inside `mask` if given) where det(I + ∇u) <= 0, i.e. the map folds."""
    det = jacobian_determinant(ddf)
    if mask is not None:
        det = det[mask.astype(bool)]
    return float(100.0 * np.mean(det <= 0)) if det.size else float("nan")


def endpoint_error(ddf: np.ndarray, ddf_true: np.ndarray, spacing_zyx: Sequence[float],
                   mask: np.ndarray | None = None) -> float:
    """Mean Euclidean distance in mm between predicted and true displacements [3, D, H, W] (voxels)."""
    if ddf.shape != ddf_true.shape:
        raise ValueError(f"ddf shapes differ: {ddf.shape} vs {ddf_true.shape}")
    s = np.asarray(spacing_zyx, dtype=np.float64)[:, None, None, None]
    err = np.sqrt((((ddf - ddf_true) * s) ** 2).sum(axis=0))
    if mask is not None:
        err = err[mask.astype(bool)]
    return float(err.mean()) if err.size else float("nan")
