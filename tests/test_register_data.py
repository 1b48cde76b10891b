"""Registration data: the phantom pairs (inter-subject and known deformations) and the OASIS / IXI converters."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medgmae_plans.runtime import UserError
from preprocessing.layouts.registration import RegistrationDataset, resolve
from medgmae_trainers.registration.metrics import dice_per_label, jacobian_determinant
from medgmae_trainers.registration.phantom_pairs import build_phantom_pairs
from medgmae_trainers.registration.warping import warp_labels
from preprocessing.convert.ixi import SEG_TABLE, VOI, convert_ixi, seg_norm
from preprocessing.convert.oasis import convert_oasis

TINY = dict(n_train=2, n_val=2, n_test=2, spacing_mm=12.0, shape_zyx=(16, 32, 32),
            box_lo_zyx=(-170.0, -170.0, -192.0), max_disp_mm=24.0)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return build_phantom_pairs(tmp_path_factory.mktemp("raw"), pbar=False, log=lambda *a: None, **TINY)


def test_phantom_pairs_layout_and_known_deformations(phantom):
    ds = RegistrationDataset(phantom)
    assert ds.shape == (16, 32, 32) and ds.has_labels and resolve("phantom", phantom.parent) == phantom
    assert len(ds.train_pairs()) == 2 and [p.flow is None for p in ds.pairs("val")] == [True, True, False, False]
    for pair in ds.pairs("val") + ds.pairs("test"):
        m, f = ds.label(pair.moving), ds.label(pair.fixed)
        organs = [l for l in ds.labels if (m == l).any()]
        if pair.flow is None:  # different subjects: organs do not overlap perfectly
            assert np.nanmean(list(dice_per_label(m, f, organs).values())) < 0.95
            continue
        flow = ds.flow(pair)  # stored as an ITK field in mm, read back in voxels
        assert 0.5 < np.abs(flow).max() <= 24.0 / 12.0 + 1e-4 and jacobian_determinant(flow).min() > 0
        warped = warp_labels(torch.from_numpy(m.astype(np.int64))[None, None], torch.from_numpy(flow)[None])
        np.testing.assert_array_equal(warped[0, 0].numpy(), f)  # the true field maps moving labels onto fixed
        img_m, img_f = ds.image(pair.moving), ds.image(pair.fixed)
        assert 0 <= img_f.min() and img_f.max() <= 1 and not np.allclose(img_m, img_f)


def test_phantom_pairs_reuse_and_refusal(phantom):
    assert build_phantom_pairs(phantom.parent, pbar=False, log=lambda *a: None, **TINY) == phantom
    with pytest.raises(UserError, match="other settings"):
        build_phantom_pairs(phantom.parent, pbar=False, log=lambda *a: None, **{**TINY, "seed": 1})


def test_dataset_errors(tmp_path, phantom):
    with pytest.raises(UserError, match="missing"):
        RegistrationDataset(tmp_path)
    with pytest.raises(UserError, match="no registration dataset 'nope'"):
        resolve("nope", phantom.parent)
    desc = json.loads((phantom / "dataset_registration.json").read_text())
    desc["val"].append({"moving": "ghost", "fixed": "sub000"})
    (tmp_path / "dataset_registration.json").write_text(json.dumps(desc))
    with pytest.raises(UserError, match="unknown case 'ghost'"):
        RegistrationDataset(tmp_path)


def _write(arr, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


def test_oasis_converter(tmp_path):
    src = tmp_path / "oasis"
    rng = np.random.default_rng(0)
    for sid in (1, 2, 5, 438, 439, 440, 458, 459):
        d = src / f"OASIS_OAS1_{sid:04d}_MR1"
        _write(rng.random((6, 7, 8)).astype(np.float32) * 200, d / "aligned_norm.nii.gz")
        _write(rng.integers(0, 36, (6, 7, 8)).astype(np.int16), d / "aligned_seg35.nii.gz")
    (src / "seg35_labels.txt").write_text("0 Unknown\n1 Left-Cerebral-White-Matter\n")
    out = convert_oasis(src, tmp_path / "Registration_OASIS", log=lambda *a: None)
    ds = RegistrationDataset(out)
    assert ds.shape == (6, 7, 8) and ds.labels[1] == "Left-Cerebral-White-Matter" and ds.labels[35] == "structure 35"
    assert [(p.moving, p.fixed) for p in ds.pairs("val")] == [("OASIS_0439", "OASIS_0438"), ("OASIS_0440", "OASIS_0439")]
    assert [(p.moving, p.fixed) for p in ds.pairs("test")] == [("OASIS_0459", "OASIS_0458")]
    assert len(ds.train_pairs()) == 6 and 0 <= ds.image("OASIS_0001").min() and ds.image("OASIS_0001").max() == 1
    with pytest.raises(UserError, match="exists"):
        convert_oasis(src, out, log=lambda *a: None)
    _write(np.zeros((6, 7, 9), np.int16), src / "OASIS_OAS1_0002_MR1" / "aligned_seg35.nii.gz")
    with pytest.raises(UserError, match="OASIS_OAS1_0002_MR1/aligned_seg35.nii.gz: size"):
        convert_oasis(src, tmp_path / "other", log=lambda *a: None)
    assert not (tmp_path / "other").exists()  # nothing half-written


def test_ixi_converter(tmp_path):
    src = tmp_path / "IXI_data"
    rng = np.random.default_rng(1)
    fs_ids = np.array(SEG_TABLE)

    def subject(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            pickle.dump((rng.random((6, 7, 8)).astype(np.float32), fs_ids[rng.integers(0, 46, (6, 7, 8))]), fh)

    subject(src / "atlas.pkl")
    for split, n in (("Train", 3), ("Val", 2), ("Test", 1)):
        for i in range(n):
            subject(src / split / f"subject_{i}.pkl")
    out = convert_ixi(src, tmp_path / "Registration_IXI", log=lambda *a: None)
    ds = RegistrationDataset(out)
    assert sorted(ds.labels) == list(VOI) and len(VOI) == 30 and ds.labels[1] == "Left-Cerebral-White-Matter"
    assert [p.moving for p in ds.train_pairs()] == ["atlas"] * 3 and len(ds.pairs("val")) == 2
    with open(src / "atlas.pkl", "rb") as fh:
        img, lab = pickle.load(fh)
    np.testing.assert_array_equal(ds.label("atlas"), seg_norm(lab))
    np.testing.assert_allclose(ds.image("atlas"), img)
    assert seg_norm(np.array([0, 2, 255, 9]))[[0, 1, 2, 3]].tolist() == [0, 1, 45, 0]
    (src / "Val" / "subject_9.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="subject_9.pkl: cannot be unpickled"):
        convert_ixi(src, tmp_path / "other", log=lambda *a: None)
