"""The 3 mm `3d_lowres` configuration: planned beside `3d_fullres` without touching it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from plan_support import make_phantom, nnunet_folders, run_module
from test_plan_preprocess import _load

from medgmae_plans.constants import window_hu

DATASET = "Dataset990_AbdomenPhantom"
ML_PER_MM3 = 1e-3


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A 2-case phantom preprocessed for 3d_fullres, then for 3d_lowres in a second run."""
    root = tmp_path_factory.mktemp("lowres")
    env = nnunet_folders(root)
    raw = make_phantom(env["nnUNet_raw"], n_train=2, box_mm=(200.0, 160.0, 150.0))
    first = run_module("preprocessing.plan_and_preprocess", ["-d", "Phantom", "-np", "1", "--no-pbar"], env)
    assert first.returncode == 0, first.stderr
    out = env["nnUNet_preprocessed"] / DATASET
    fullres = out / "MedGMAEPlans_3d_fullres"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in fullres.iterdir()}
    second = run_module("preprocessing.plan_and_preprocess",
                        ["-d", "Phantom", "-c", "3d_fullres", "3d_lowres", "-np", "1", "--no-pbar"], env)
    assert second.returncode == 0, second.stderr
    return {"raw": raw, "out": out, "fullres": fullres, "lowres": out / "MedGMAEPlans_3d_lowres",
            "before": before, "plans": json.loads((out / "MedGMAEPlans.json").read_text()),
            "run": json.loads((out / "medgmae_plan_and_preprocess.json").read_text())}


def test_lowres_is_planned_at_3mm_beside_fullres(planned):
    configs = planned["plans"]["configurations"]
    assert sorted(configs) == ["3d_fullres", "3d_lowres"]
    low, full = configs["3d_lowres"], configs["3d_fullres"]
    assert low["spacing"] == [3.0, 3.0, 3.0] and low["patch_size"] == [48, 48, 48]
    assert low["data_identifier"] == "MedGMAEPlans_3d_lowres"
    assert low["architecture"]["arch_kwargs"]["patch_size"] == 8
    assert full["spacing"] == [1.5, 1.5, 1.5] and full["patch_size"] == [96, 96, 96]
    # the same window and resampling: only the geometry differs
    for key in ("normalization_schemes", "use_mask_for_norm", "resampling_fn_data_kwargs"):
        assert low[key] == full[key]


def test_adding_lowres_leaves_fullres_untouched(planned):
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in planned["fullres"].iterdir()}
    assert after == planned["before"]
    assert planned["run"]["results"]["configurations"]["3d_fullres"]["preprocessing"] == "reused"
    assert planned["run"]["results"]["configurations"]["3d_lowres"]["preprocessing"] == "done"


def test_lowres_cases_are_windowed_at_3mm(planned):
    import SimpleITK as sitk

    case = "phantom_000"
    data, seg, _, properties = _load(planned["lowres"], case)
    assert properties["spacing_after_resampling"] == [3.0, 3.0, 3.0]
    assert 0.0 <= data.min() and data.max() <= 1.0
    # the window formula: the mean intensity matches that of the windowed raw image (resampling averages)
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(planned["raw"] / "imagesTr" / f"{case}_0000.nii.gz")))
    assert data[seg >= 0].mean() == pytest.approx(window_hu(hu).mean(), abs=0.02)


def test_large_organ_volumes_agree_with_fullres(planned):
    checked = 0
    for case in ("phantom_000", "phantom_001"):
        _, seg_full, _, _ = _load(planned["fullres"], case)
        _, seg_low, _, _ = _load(planned["lowres"], case)
        for label in range(1, 16):
            full_ml = np.count_nonzero(seg_full == label) * 1.5 ** 3 * ML_PER_MM3
            low_ml = np.count_nonzero(seg_low == label) * 3.0 ** 3 * ML_PER_MM3
            if full_ml >= 100:
                assert low_ml == pytest.approx(full_ml, rel=0.05), (case, label)
                checked += 1
    assert checked >= 2
