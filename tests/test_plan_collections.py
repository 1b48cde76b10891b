"""Unlabelled collections (NIfTI files and a DICOM series) next to a labelled dataset, and the reader."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk

from plan_support import make_phantom, nnunet_folders, run_module
from preprocessing.image_sources import keep_locale


def write_dicom_series(image: sitk.Image, folder) -> None:
    """One CT series, slice by slice, with the tags GDCM needs to stack it back (HU via rescale)."""
    folder.mkdir(parents=True)
    image = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkInt16), "LPS")
    direction = image.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(int(time.time() * 1000))
    for z in range(image.GetDepth()):
        piece = image[:, :, z]
        tags = {
            "0008|0060": "CT", "0020|000e": series_uid, "0020|000d": series_uid + ".1",
            "0020|0013": str(z + 1), "0028|1052": "0", "0028|1053": "1", "0028|1054": "HU",
            "0020|0037": "\\".join(map(str, (direction[0], direction[3], direction[6],
                                               direction[1], direction[4], direction[7]))),
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))),
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{z:04d}.dcm"))
        with keep_locale():  # ITK's GDCM writer sets the C locale and leaves it
            writer.Execute(piece)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("collections")
    env = nnunet_folders(root)
    raw = make_phantom(env["nnUNet_raw"], n_train=2, n_unlabeled=2, spacing_scale=3.0, box_mm=(120.0, 90.0, 90.0))
    images = root / "unlabelled"
    images.mkdir()
    for path in sorted((raw / "imagesUnlabeled").glob("*.nii.gz")):
        shutil.copyfile(path, images / path.name)
    write_dicom_series(sitk.ReadImage(str(images / "phantom_unl000_0000.nii.gz")), images / "scanner" / "series1")
    result = run_module("preprocessing.plan_and_preprocess",
                        ["-d", "Phantom", "--images", images, "--name", "phantom_unl", "-np", "1", "--no-pbar"], env)
    assert result.returncode == 0, result.stderr
    return {"env": env, "raw": raw, "images": images}


@pytest.fixture
def reader_env(collection, monkeypatch):
    for var, folder in collection["env"].items():
        monkeypatch.setenv(var, str(folder))
    return collection["env"]["nnUNet_preprocessed"]


def test_collection_folder_layout(collection):
    out = collection["env"]["nnUNet_preprocessed"] / "Collection_phantom_unl"
    plans = json.loads((out / "MedGMAEPlans.json").read_text())
    labelled = json.loads((collection["env"]["nnUNet_preprocessed"] / "Dataset990_AbdomenPhantom" /
                           "MedGMAEPlans.json").read_text())
    ours, theirs = plans["configurations"]["3d_fullres"], labelled["configurations"]["3d_fullres"]
    for key in ("spacing", "patch_size", "normalization_schemes", "resampling_fn_data_kwargs"):
        assert ours[key] == theirs[key]
    assert plans["foreground_intensity_properties_per_channel"] == labelled["foreground_intensity_properties_per_channel"]
    sources = json.loads((out / "sources.json").read_text())
    assert sorted(sources) == ["phantom_unl000", "phantom_unl001", "scanner_series1"]
    assert "DICOM" in sources["scanner_series1"]
    assert (out / "medgmae_plan_and_preprocess.json").is_file() and (out / "medgmae_plan_and_preprocess.log").is_file()


def test_reader_lists_and_loads_both_kinds(reader_env):
    from preprocessing.collections import list_pretraining_cases, load_case, load_properties

    cases = list_pretraining_cases(["phantom"], ["phantom_unl"])
    assert [(c.source, c.case_id, c.labelled) for c in cases] == [
        ("Dataset990_AbdomenPhantom", "phantom_000", True), ("Dataset990_AbdomenPhantom", "phantom_001", True),
        ("Collection_phantom_unl", "phantom_unl000", False), ("Collection_phantom_unl", "phantom_unl001", False),
        ("Collection_phantom_unl", "scanner_series1", False)]
    for case in cases:
        image, seg = load_case(case)
        assert image.dtype == np.float32 and image.ndim == 4 and image.shape[0] == 1
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
        assert load_properties(case)["spacing_after_resampling"] == [1.5, 1.5, 1.5]
        if case.labelled:
            assert seg.dtype == np.int16 and seg.shape == image.shape and seg.max() > 0
        else:
            assert seg is None


def test_dicom_series_matches_its_nifti(reader_env):
    from preprocessing.collections import list_pretraining_cases, load_case

    by_id = {c.case_id: c for c in list_pretraining_cases([], ["Collection_phantom_unl"])}
    nifti, _ = load_case(by_id["phantom_unl000"])
    dicom, _ = load_case(by_id["scanner_series1"])
    # DICOM is stored in LPS order, so the volume may come back flipped along some axes
    assert sorted(nifti.shape) == sorted(dicom.shape)
    assert abs(float(nifti.mean()) - float(dicom.mean())) < 1e-3
    assert np.allclose(np.sort(nifti.ravel())[::97], np.sort(dicom.ravel())[::97], atol=1e-3)


def test_reader_errors_name_what_exists(reader_env):
    from medgmae_plans.runtime import UserError
    from preprocessing.collections import list_pretraining_cases

    with pytest.raises(UserError, match="collections that exist: phantom_unl"):
        list_pretraining_cases([], ["nope"])
    with pytest.raises(UserError, match="no dataset matches"):
        list_pretraining_cases(["BTCV"], [])


def test_a_ct_stored_flipped_preprocesses_to_the_same_array(nnunet_env, tmp_path):
    """One CT twice in a collection, as stored and rewritten with the x axis flipped in both the voxels and
    the direction matrix (the same patient in space): the reorienting reader's layout makes them one array."""
    from bad_input_support import small_ct, write_ct

    from preprocessing.image_sources import CANONICAL_ORIENTATION
    from preprocessing.plan_and_preprocess import main
    from preprocessing.collections import collection_data_folder, folder_cases, load_case, load_properties

    hu = small_ct((20, 24, 28))
    stored = sitk.ReadImage(str(write_ct(tmp_path / "images" / "as_stored.nii.gz", hu, spacing=(1.5, 1.5, 1.5))))
    flipped = sitk.GetImageFromArray(hu[:, :, ::-1])
    flipped.SetSpacing(stored.GetSpacing())
    direction = np.array(stored.GetDirection()).reshape(3, 3)
    direction[:, 0] *= -1  # index axis x now runs the other way through space
    flipped.SetDirection(direction.ravel().tolist())
    flipped.SetOrigin(stored.TransformIndexToPhysicalPoint((hu.shape[2] - 1, 0, 0)))
    sitk.WriteImage(flipped, str(tmp_path / "images" / "flipped.nii.gz"))
    assert not np.array_equal(sitk.GetArrayFromImage(flipped), hu)

    assert main(["--images", str(tmp_path / "images"), "--name", "Twice", "-np", "1", "--no-pbar"]) == 0
    cases = {c.case_id: c for c in folder_cases(collection_data_folder("Twice"), labelled=False)}
    (a, _), (b, _) = load_case(cases["as_stored"]), load_case(cases["flipped"])
    np.testing.assert_array_equal(a, b)
    orientations = {k: load_properties(c)["sitk_stuff"]["original_orientation"] for k, c in cases.items()}
    assert orientations["as_stored"] != orientations["flipped"]
    dataset_json = json.loads((collection_data_folder("Twice").parent / "dataset.json").read_text())
    assert dataset_json["orientation"] == CANONICAL_ORIENTATION == "RAS"


def test_reading_a_dicom_series_keeps_the_locale(collection):
    """GDCM sets the C locale and leaves it; the reader puts it back, or every later open() of the
    command would decode text as ASCII."""
    import locale

    from preprocessing.image_sources import find_images, read_source

    before = locale.setlocale(locale.LC_ALL)
    sources = [s for s in find_images(collection["images"]) if s.dicom_files]
    assert sources and read_source(sources[0])[0].GetDepth() > 1
    assert locale.setlocale(locale.LC_ALL) == before
