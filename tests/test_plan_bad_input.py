"""Bad input: one line naming the file, exit 2, nothing half-written; a rerun after the fix works."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from plan_support import make_phantom, run_module

DATASET = "Dataset990_AbdomenPhantom"
MODULE = "preprocessing.plan_and_preprocess"


@pytest.fixture
def phantom(nnunet_env):
    raw = make_phantom(nnunet_env["nnUNet_raw"], n_train=2, spacing_scale=3.0, box_mm=(120.0, 90.0, 90.0))
    return nnunet_env, raw


def _fails_naming(result, fragment: str, what: str):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0] and what in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def _nothing_written(env):
    out = env["nnUNet_preprocessed"] / DATASET
    assert not (out / "MedGMAEPlans.json").exists()
    assert not (out / "MedGMAEPlans_3d_fullres").exists()
    assert not (out / "dataset_fingerprint.json").exists()


def _run(env, *extra):
    return run_module(MODULE, ["-d", "990", "-np", "1", "--no-pbar", *extra], env)


def test_corrupt_nifti(phantom):
    env, raw = phantom
    image = raw / "imagesTr" / "phantom_001_0000.nii.gz"
    image.write_bytes(b"\x1f\x8b this is not a NIfTI file" * 10)
    _fails_naming(_run(env), str(image), "cannot be read")
    _nothing_written(env)


def test_label_geometry_differs(phantom):
    env, raw = phantom
    label_file = raw / "labelsTr" / "phantom_000.nii.gz"
    label = sitk.ReadImage(str(label_file))
    label.SetSpacing([s * 1.1 for s in label.GetSpacing()])
    sitk.WriteImage(label, str(label_file), useCompression=True)
    _fails_naming(_run(env), str(label_file), "spacing")
    _nothing_written(env)


def test_nan_voxels_then_rerun_after_fix(phantom):
    env, raw = phantom
    image_file = raw / "imagesTr" / "phantom_000_0000.nii.gz"
    original = sitk.ReadImage(str(image_file))
    voxels = sitk.GetArrayFromImage(original).astype(np.float32)
    voxels[1, 2, 3:7] = np.nan
    broken = sitk.GetImageFromArray(voxels)
    broken.CopyInformation(original)
    sitk.WriteImage(broken, str(image_file), useCompression=True)
    _fails_naming(_run(env), str(image_file), "4 voxels are NaN")
    _nothing_written(env)

    sitk.WriteImage(original, str(image_file), useCompression=True)
    fixed = _run(env)  # no --clean needed
    assert fixed.returncode == 0, fixed.stderr
    out = env["nnUNet_preprocessed"] / DATASET
    assert sorted(p.name for p in (out / "MedGMAEPlans_3d_fullres").glob("*.b2nd")) == \
        ["phantom_000.b2nd", "phantom_000_seg.b2nd", "phantom_001.b2nd", "phantom_001_seg.b2nd"]

    again = _run(env)  # unchanged raw files: nnU-Net's fingerprint is reused
    assert again.returncode == 0, again.stderr
    report = json.loads((out / "medgmae_plan_and_preprocess.json").read_text())
    assert report["results"]["fingerprint"] == "reused"


def test_missing_dataset_json(phantom):
    env, raw = phantom
    (raw / "dataset.json").unlink()
    _fails_naming(_run(env), str(raw / "dataset.json"), "missing")
    _nothing_written(env)


def test_non_ct_channel_in_dataset_json(phantom):
    env, raw = phantom
    meta = json.loads((raw / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1"}
    (raw / "dataset.json").write_text(json.dumps(meta))
    _fails_naming(_run(env), str(raw / "dataset.json"), "one CT channel")
    _nothing_written(env)


def test_second_channel_file(phantom):
    env, raw = phantom
    extra = raw / "imagesTr" / "phantom_000_0001.nii.gz"
    extra.write_bytes((raw / "imagesTr" / "phantom_000_0000.nii.gz").read_bytes())
    _fails_naming(_run(env), str(extra), "second channel")
    _nothing_written(env)


def test_undeclared_label_value(phantom):
    env, raw = phantom
    label_file = raw / "labelsTr" / "phantom_001.nii.gz"
    label = sitk.ReadImage(str(label_file))
    voxels = sitk.GetArrayFromImage(label)
    voxels[0, 0, 0] = 42
    fixed = sitk.GetImageFromArray(voxels)
    fixed.CopyInformation(label)
    sitk.WriteImage(fixed, str(label_file), useCompression=True)
    _fails_naming(_run(env), str(label_file), "[42]")
    _nothing_written(env)
