"""Dice and NSD of one case: shapes with known answers, nnU-Net's empty conventions, the crop shortcut."""
from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.metrics import _monai_surface_dice, case_metrics, confusion_counts, surface_dice


def cube(shape=(40, 40, 40), lo=10, hi=30) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[lo:hi, lo:hi, lo:hi] = True
    return mask


def ball(shape, center, radius_mm, spacing) -> np.ndarray:
    grids = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing))
    return d2 <= radius_mm ** 2


def test_cube_shifted_by_2mm_isotropic():
    ref = cube()
    pred = np.roll(ref, 2, axis=0)  # 2 voxels of 1 mm
    assert surface_dice(ref, pred, (1, 1, 1), 3.0) == pytest.approx(1.0)
    partial = surface_dice(ref, pred, (1, 1, 1), 1.0)
    assert 0.3 < partial < 0.9  # the two shifted faces are 2 mm off, the side faces match


@pytest.mark.parametrize("axis,voxels", [(0, 1), (2, 2)])
def test_shift_of_2mm_with_anisotropic_spacing(axis, voxels):
    """Spacing (z, y, x) = (2, 1, 1): one voxel along z and two along x are both 2 mm."""
    ref = cube()
    pred = np.roll(ref, voxels, axis=axis)
    assert surface_dice(ref, pred, (2, 1, 1), 3.0) == pytest.approx(1.0)
    assert surface_dice(ref, pred, (2, 1, 1), 1.0) < 0.9
    # the same shift read with the spacing in the wrong axis order would be 1 mm or 4 mm
    wrong = surface_dice(ref, pred, (1, 1, 2), 1.5 if axis == 0 else 3.0)
    assert wrong != pytest.approx(surface_dice(ref, pred, (2, 1, 1), 1.5 if axis == 0 else 3.0))


def test_concentric_balls_3mm_apart():
    spacing = (1.5, 0.8, 0.8)
    shape = (40, 60, 60)
    center = (20, 30, 30)
    inner = ball(shape, center, 10.0, spacing)
    outer = ball(shape, center, 13.0, spacing)
    assert surface_dice(inner, outer, spacing, 1.0) < 0.05
    assert surface_dice(inner, outer, spacing, 5.0) == pytest.approx(1.0)


def test_identical_masks_and_empty_conventions():
    ref = cube()
    assert surface_dice(ref, ref, (1, 1, 1), 0.0) == pytest.approx(1.0)
    empty = np.zeros_like(ref)
    assert math.isnan(surface_dice(empty, empty, (1, 1, 1)))
    assert surface_dice(ref, empty, (1, 1, 1)) == 0.0
    assert surface_dice(empty, ref, (1, 1, 1)) == 0.0


def test_cropping_gives_monais_full_volume_answer():
    """case_metrics works on each organ's box; objects touching the border included."""
    rng = np.random.default_rng(3)
    ref = np.zeros((30, 34, 38), np.uint8)
    ref[0:12, 3:20, 5:30] = 1           # touches the z = 0 border
    ref[15:28, 20:34, 10:25] = 2        # touches the y border
    pred = ref.copy()
    pred[rng.random(ref.shape) < 0.04] = 0
    pred[10:14, 18:22, 8:12] = 2        # a stray blob
    pred = np.roll(pred, 1, axis=2)
    spacing = (2.0, 0.7, 0.9)
    got = case_metrics(ref, pred, [1, 2], spacing, 1.0)
    for label in (1, 2):
        full = _monai_surface_dice(ref == label, pred == label, spacing, 1.0)
        assert got[label]["NSD"] == pytest.approx(full, abs=1e-6)
        assert 0.0 < full < 1.0


def test_confusion_counts_match_boolean_masks():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 5, (9, 10, 11))
    pred = rng.integers(0, 4, (9, 10, 11))
    counts = confusion_counts(ref, pred, [1, 2, 3, 4])
    for label, (tp, fp, fn, tn) in counts.items():
        r, p = ref == label, pred == label
        assert (tp, fp, fn, tn) == ((r & p).sum(), (~r & p).sum(), (r & ~p).sum(), (~r & ~p).sum())


def test_case_metrics_follow_nnunet_for_empty_labels():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[6:9, 6:9, 6:9] = 3
    pred = np.zeros_like(ref)
    pred[2:6, 2:6, 3:7] = 1
    pred[0:2, 0:2, 0:2] = 2               # label 2 only in the prediction
    m = case_metrics(ref, pred, [1, 2, 3, 4], (1, 1, 1))
    tp, fp, fn = 4 * 4 * 3, 4 * 4, 4 * 4
    assert m[1]["Dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m[1]["IoU"] == pytest.approx(tp / (tp + fp + fn))
    assert (m[2]["Dice"], m[2]["NSD"], m[2]["n_ref"], m[2]["n_pred"]) == (0.0, 0.0, 0, 8)
    assert (m[3]["Dice"], m[3]["NSD"], m[3]["n_ref"], m[3]["n_pred"]) == (0.0, 0.0, 27, 0)
    assert math.isnan(m[4]["Dice"]) and math.isnan(m[4]["IoU"]) and math.isnan(m[4]["NSD"])
    assert m[4]["TN"] == ref.size


def test_nan_tolerance_skips_nsd_and_keeps_dice():
    """`medgmae_evaluate --no-nsd`: Dice as usual, NSD NaN for every label."""
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    pred = np.roll(ref, 1, axis=0)
    full = case_metrics(ref, pred, [1, 2], (1.0, 1.0, 1.0), 1.0)
    fast = case_metrics(ref, pred, [1, 2], (1.0, 1.0, 1.0), math.nan)
    assert fast[1]["Dice"] == full[1]["Dice"] == 0.75 and not math.isnan(full[1]["NSD"])
    assert math.isnan(fast[1]["NSD"]) and math.isnan(fast[2]["NSD"])
