"""medgmae_plan_and_preprocess on a phantom with varied spacings and flipped directions."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from plan_support import make_phantom, nnunet_folders, run_module

from preprocessing.labels import AMOS_LABELS

DATASET = "Dataset990_AbdomenPhantom"
N_TRAIN = 4  # cases 000 and 003 of seed 0 have flipped direction matrices


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    env = nnunet_folders(root)
    raw = make_phantom(env["nnUNet_raw"], n_train=N_TRAIN)
    result = run_module("preprocessing.plan_and_preprocess", ["-d", "Phantom", "-np", "1", "--no-pbar"], env)
    assert result.returncode == 0, result.stderr
    out = env["nnUNet_preprocessed"] / DATASET
    return {"env": env, "raw": raw, "out": out, "data": out / "MedGMAEPlans_3d_fullres",
            "plans": json.loads((out / "MedGMAEPlans.json").read_text())}


def _cases(raw):
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTr").glob("*_0000.nii.gz"))


def _load(data_folder, case):
    import os

    # nnunetv2 reads its folder variables at import; the dataset classes do not use them
    os.environ.setdefault("nnUNet_raw", str(data_folder))
    os.environ.setdefault("nnUNet_preprocessed", str(data_folder))
    os.environ.setdefault("nnUNet_results", str(data_folder))
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset = infer_dataset_class(str(data_folder))(str(data_folder))
    data, seg, seg_prev, properties = dataset.load_case(case)
    return np.asarray(data[:]), np.asarray(seg[:]), seg_prev, properties


def test_phantom_has_varied_geometry(preprocessed):
    directions, spacings = set(), set()
    for case in _cases(preprocessed["raw"]):
        image = sitk.ReadImage(str(preprocessed["raw"] / "imagesTr" / f"{case}_0000.nii.gz"))
        directions.add(tuple(np.round(image.GetDirection(), 3)))
        spacings.add(tuple(np.round(image.GetSpacing(), 2)))
    assert len(directions) > 1 and len(spacings) == N_TRAIN


def test_plan_is_medgmae_fullres(preprocessed):
    plans = preprocessed["plans"]
    assert plans["plans_name"] == "MedGMAEPlans"
    assert list(plans["configurations"]) == ["3d_fullres"]
    config = plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [1.5, 1.5, 1.5]
    assert config["patch_size"] == [96, 96, 96]
    assert plans["transpose_forward"] == [0, 1, 2] and plans["transpose_backward"] == [0, 1, 2]
    assert config["normalization_schemes"] == ["CTNormalization"] and config["use_mask_for_norm"] == [False]
    window = plans["foreground_intensity_properties_per_channel"]["0"]
    assert (window["mean"], window["std"], window["percentile_00_5"], window["percentile_99_5"]) == \
        (-175.0, 425.0, -175.0, 250.0)
    assert config["architecture"]["network_class_name"] == "medgmae_trainers.unetr.build_unetr"


def test_every_case_loads_at_target_spacing(preprocessed):
    cases = _cases(preprocessed["raw"])
    for case in cases:
        data, seg, seg_prev, properties = _load(preprocessed["data"], case)
        raw = sitk.ReadImage(str(preprocessed["raw"] / "imagesTr" / f"{case}_0000.nii.gz"))
        assert properties["spacing_after_resampling"] == [1.5, 1.5, 1.5]
        np.testing.assert_allclose(properties["spacing"], raw.GetSpacing()[::-1], rtol=1e-6)
        expected = np.round(np.array(raw.GetSize()[::-1]) * np.array(raw.GetSpacing()[::-1]) / 1.5)
        assert data.dtype == np.float32 and data.shape == (1, *seg.shape[1:])
        np.testing.assert_array_equal(data.shape[1:], expected)
        assert seg_prev is None
        assert set(np.unique(seg)) <= set(AMOS_LABELS.values()) | {-1}
    assert sorted(p.name[:-4] for p in preprocessed["data"].glob("*.pkl")) == cases


def test_intensities_are_the_window_of_resampled_hu(preprocessed):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIOWithReorient
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from medgmae_plans.constants import window_hu

    kwargs = preprocessed["plans"]["configurations"]["3d_fullres"]["resampling_fn_data_kwargs"]
    for case in _cases(preprocessed["raw"])[:2]:
        data, _, _, properties = _load(preprocessed["data"], case)
        assert data.min() >= 0.0 and data.max() <= 1.0
        # read as nnU-Net does: the phantom's dataset.json names the reader that turns each case to RAS
        hu = SimpleITKIOWithReorient().read_images([str(preprocessed["raw"] / "imagesTr" / f"{case}_0000.nii.gz")])[0][0]
        spacing = properties["spacing"]
        # nnU-Net windows first, then resamples: the same steps reproduce the file exactly
        exact = resample_data_or_seg_to_shape(window_hu(hu)[None], data.shape[1:], spacing, [1.5] * 3, **kwargs)
        np.testing.assert_allclose(data, exact, atol=1e-5)
        # and the window of the resampled HU differs only where interpolation crosses the clip bounds
        resampled = resample_data_or_seg_to_shape(hu[None].astype(np.float32), data.shape[1:], spacing, [1.5] * 3,
                                                  **kwargs)
        difference = np.abs(data - window_hu(resampled))
        assert np.median(difference) < 1e-5 and np.mean(difference < 0.01) > 0.8


def test_organ_volumes_are_preserved(preprocessed):
    checked = 0
    for case in _cases(preprocessed["raw"]):
        label = sitk.ReadImage(str(preprocessed["raw"] / "labelsTr" / f"{case}.nii.gz"))
        raw = sitk.GetArrayViewFromImage(label)
        voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
        _, seg, _, _ = _load(preprocessed["data"], case)
        for organ in range(1, 16):
            before = np.count_nonzero(raw == organ) * voxel_ml
            # small or cut-off organs are dominated by boundary voxels, and so are the tubes (esophagus,
            # aorta, IVC: 10-13 mm radius, cut by the crop box)
            if before < 20.0 or organ in (5, 8, 9):
                continue
            after = np.count_nonzero(seg == organ) * 1.5 ** 3 / 1000.0
            assert after == pytest.approx(before, rel=0.05), (case, organ, before, after)
            checked += 1
    assert checked >= 2 * N_TRAIN


def test_run_log_and_json_and_ground_truth(preprocessed):
    out = preprocessed["out"]
    report = json.loads((out / "medgmae_plan_and_preprocess.json").read_text())
    assert report["results"]["cases"] == N_TRAIN and report["results"]["fingerprint"] == "extracted"
    assert "preprocessed 4 cases" in (out / "medgmae_plan_and_preprocess.log").read_text()
    assert sorted(p.name for p in (out / "gt_segmentations").iterdir()) == \
        sorted(f"{c}.nii.gz" for c in _cases(preprocessed["raw"]))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left
    with open(preprocessed["data"] / "phantom_000.pkl", "rb") as f:
        locations = pickle.load(f)["class_locations"]  # nnU-Net's foreground oversampling needs these
    assert len(locations[6]) > 0  # the liver


def test_rerun_reuses_the_data_until_an_input_changes(preprocessed):
    """Last in this module: it reruns the command on the shared fixture."""
    import os

    env, out, data = preprocessed["env"], preprocessed["out"], preprocessed["data"]
    args = ["-d", "Phantom", "-np", "1", "--no-pbar"]
    before = (data / "phantom_000.b2nd").stat().st_mtime_ns
    assert run_module("preprocessing.plan_and_preprocess", args, env).returncode == 0
    assert (data / "phantom_000.b2nd").stat().st_mtime_ns == before
    assert json.loads((out / "medgmae_plan_and_preprocess.json").read_text())["results"]["configurations"]["3d_fullres"]["preprocessing"] == "reused"

    image = preprocessed["raw"] / "imagesTr" / "phantom_001_0000.nii.gz"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # the input changed
    assert run_module("preprocessing.plan_and_preprocess", args, env).returncode == 0
    assert (data / "phantom_000.b2nd").stat().st_mtime_ns != before
    assert json.loads((out / "medgmae_plan_and_preprocess.json").read_text())["results"]["configurations"]["3d_fullres"]["preprocessing"] == "done"
