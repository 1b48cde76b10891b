"""Per-label overlap (Dice, IoU, confusion counts) and normalised surface Dice of one case.

Conventions follow nnU-Net's `evaluate_predictions.compute_metrics`: a label absent from both
reference and prediction has Dice/IoU NaN (left out of the means by `nanmean`); a label present in
only one of them has Dice 0. NSD follows the same rule (NaN when both are empty, 0 when one is).

NSD is MONAI's `compute_surface_dice` with the voxel spacing in mm and DeepMind's surface elements
(`use_subvoxels=True`, the `surface-distance` library the challenges use), so the tolerance is in mm.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

NSD_TOLERANCE_MM = 1.0

# one voxel of background around a label's box keeps its surface inside the crop; two are enough
# for the 2x2x2 neighbourhoods of the subvoxel surface elements
_CROP_MARGIN = 2


def confusion_counts(ref: np.ndarray, pred: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[int, int, int, int]]:
    """(tp, fp, fn, tn) per label from one joint histogram of (ref, pred) values.

    ref, pred: integer arrays of the same shape [D, H, W]; values must be >= 0.
    """
    n = int(max(ref.max(initial=0), pred.max(initial=0), max(labels, default=0))) + 1
    joint = np.bincount(ref.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel(), minlength=n * n)
    joint = joint.reshape(n, n)  # rows: reference value, columns: predicted value
    total = int(ref.size)
    counts = {}
    for label in labels:
        tp = int(joint[label, label])
        fn = int(joint[label].sum()) - tp
        fp = int(joint[:, label].sum()) - tp
        counts[label] = (tp, fp, fn, total - tp - fp - fn)
    return counts


def overlap_metrics(tp: int, fp: int, fn: int, tn: int) -> dict:
    """nnU-Net's per-label entry: Dice, IoU (NaN when the label is in neither), counts, sizes."""
    empty = tp + fp + fn == 0
    return {
        "Dice": math.nan if empty else 2 * tp / (2 * tp + fp + fn),
        "IoU": math.nan if empty else tp / (tp + fp + fn),
        "FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": fp + tp, "n_ref": fn + tp,
    }


def surface_dice(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float],
                 tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice of two boolean masks [D, H, W] with voxel `spacing` (z, y, x) in mm.

    NaN when both masks are empty, 0 when only one is. Only the box around both masks (plus a
    margin) is passed to MONAI: the surfaces and their distances are the same, the work is not.
    """
    ref_any, pred_any = bool(ref_mask.any()), bool(pred_mask.any())
    if not ref_any and not pred_any:
        return math.nan
    if not ref_any or not pred_any:
        return 0.0
    box = _union_box(ref_mask, pred_mask)
    return _monai_surface_dice(ref_mask[box], pred_mask[box], spacing, tolerance_mm)


def _union_box(*masks: np.ndarray) -> tuple[slice, ...]:
    union = np.logical_or.reduce(masks)
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(0, hits[0] - _CROP_MARGIN), min(union.shape[axis], hits[-1] + 1 + _CROP_MARGIN)))
    return tuple(box)


def _monai_surface_dice(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float],
                        tolerance_mm: float) -> float:
    import torch
    from monai.metrics import compute_surface_dice

    def one_hot(mask: np.ndarray) -> torch.Tensor:  # [1, 2, D, H, W]: background, label
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None, None]
        return torch.cat([~m, m], dim=1).float()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated internal argument
        value = compute_surface_dice(one_hot(pred_mask), one_hot(ref_mask), [float(tolerance_mm)],
                                     include_background=False, spacing=[float(s) for s in spacing],
                                     use_subvoxels=True)
    return float(value.item())


def case_metrics(ref: np.ndarray, pred: np.ndarray, labels: Sequence[int], spacing: Sequence[float],
                 tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[int, dict]:
    """Per label: nnU-Net's overlap entry plus `NSD`. ref, pred: integer label maps [D, H, W];
    spacing (z, y, x) in mm."""
    from scipy.ndimage import find_objects

    counts = confusion_counts(ref, pred, labels)
    want_nsd = not math.isnan(tolerance_mm)  # NaN: Dice only (medgmae_evaluate --no-nsd)
    if want_nsd:
        top = max(labels, default=0)
        # boxes of every label in one pass each, so the surface work only touches each organ's box
        ref_boxes = find_objects(np.clip(ref, 0, top + 1).astype(np.int32), max_label=top)
        pred_boxes = find_objects(np.clip(pred, 0, top + 1).astype(np.int32), max_label=top)
    out = {}
    for label in labels:
        entry = overlap_metrics(*counts[label])
        if not want_nsd or (entry["n_ref"] == 0 and entry["n_pred"] == 0):
            entry["NSD"] = math.nan
        elif entry["n_ref"] == 0 or entry["n_pred"] == 0:
            entry["NSD"] = 0.0
        else:
            box = _merge_boxes(ref_boxes[label - 1], pred_boxes[label - 1], ref.shape)
            entry["NSD"] = surface_dice(ref[box] == label, pred[box] == label, spacing, tolerance_mm)
        out[label] = entry
    return out


def _merge_boxes(a: tuple[slice, ...], b: tuple[slice, ...], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, min(x.start, y.start) - _CROP_MARGIN), min(n, max(x.stop, y.stop) + _CROP_MARGIN))
                 for x, y, n in zip(a, b, shape))
