"""medgmae_convert on tiny fabricated copies of each dataset's published layout (phantom volumes)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from plan_support import make_phantom

from preprocessing.validate import check_dataset
from preprocessing.convert import abdomenatlas, btcv, flare22
from preprocessing.convert.cli import main
from preprocessing.labels import AMOS_LABELS


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Two labelled cases and one test image, small (coarse spacing, cropped)."""
    raw = make_phantom(tmp_path_factory.mktemp("phantom"), n_train=2, n_test=1, spacing_scale=4.0,
                       box_mm=(200.0, 150.0, 150.0))
    images = sorted((raw / "imagesTr").glob("*.nii.gz"))
    labels = sorted((raw / "labelsTr").glob("*.nii.gz"))
    return {"images": images, "labels": labels, "test": sorted((raw / "imagesTs").glob("*.nii.gz"))}


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _write_like(voxels, reference_path, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(voxels.astype(np.uint8))
    image.CopyInformation(sitk.ReadImage(str(reference_path)))
    sitk.WriteImage(image, str(path), useCompression=True)


def _relabel(voxels, mapping):
    """Map AMOS ids to another dataset's ids; AMOS organs it lacks become background."""
    table = np.zeros(16, dtype=np.uint8)
    for amos_id, other in mapping.items():
        table[amos_id] = other
    return table[voxels]


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _convert(nnunet_env, *argv):
    return main([*map(str, argv), "-np", "1", "--no-pbar"])


def _check_output(folder, expected_labels: dict, cases: dict, n_test: int):
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"] == expected_labels
    assert meta["numTraining"] == len(cases)
    for case_id, (source_image, expected) in cases.items():
        image = folder / "imagesTr" / f"{case_id}_0000.nii.gz"
        np.testing.assert_array_equal(_array(image), _array(source_image))
        np.testing.assert_array_equal(_array(folder / "labelsTr" / f"{case_id}.nii.gz"), expected)
    assert len(list((folder / "imagesTs").glob("*.nii.gz")) if n_test else []) == n_test
    check_dataset(folder)  # what medgmae_plan_and_preprocess checks first
    assert json.loads((folder / "conversion.json").read_text())["train_cases"] == len(cases)


def test_amos(phantom, nnunet_env, tmp_path):
    src = tmp_path / "amos22"
    (a, b), (la, lb) = phantom["images"], phantom["labels"]
    _copy(a, src / "imagesTr" / "amos_0001.nii.gz")
    _copy(la, src / "labelsTr" / "amos_0001.nii.gz")
    _copy(b, src / "imagesVa" / "amos_0002.nii.gz")
    _copy(lb, src / "labelsVa" / "amos_0002.nii.gz")
    _copy(a, src / "imagesTr" / "amos_0507.nii.gz")  # MRI id: not task 1
    _copy(la, src / "labelsTr" / "amos_0507.nii.gz")
    _copy(phantom["test"][0], src / "imagesTs" / "amos_0100.nii.gz")
    names = {str(i): ("arota" if n == "aorta" else n) for n, i in AMOS_LABELS.items()}
    (src / "dataset.json").write_text(json.dumps({"name": "AMOS", "labels": names}))
    assert _convert(nnunet_env, "amos", src) == 0
    out = nnunet_env["nnUNet_raw"] / "Dataset218_AMOS2022_postChallenge_task1"
    _check_output(out, AMOS_LABELS, {"amos_0001": (a, _array(la)), "amos_0002": (b, _array(lb))}, n_test=1)


def test_flare22(phantom, nnunet_env, tmp_path):
    src = tmp_path / "FLARE22_LabeledCase50"
    to_flare = {amos: flare for flare, amos in flare22.LABEL_MAP.items()}
    cases = {}
    for n, (image, label) in enumerate(zip(phantom["images"], phantom["labels"]), start=1):
        case = f"FLARE22_Tr_{n:04d}"
        _copy(image, src / "images" / f"{case}_0000.nii.gz")
        _write_like(_relabel(_array(label), to_flare), label, src / "labels" / f"{case}.nii.gz")
        expected = _array(label)
        expected[expected > 13] = 0  # bladder and prostate/uterus are not FLARE22 organs
        cases[case] = (image, expected)
    assert _convert(nnunet_env, "flare22", tmp_path) == 0  # the parent folder is found too
    _check_output(nnunet_env["nnUNet_raw"] / "Dataset022_FLARE22", flare22.LABELS, cases, n_test=0)


def _btcv_source(phantom, root):
    to_btcv = {amos: b for b, amos in btcv.LABEL_MAP.items() if amos != 13}
    cases = {}
    for n, (image, label) in enumerate(zip(phantom["images"], phantom["labels"]), start=1):
        voxels = _relabel(_array(label), to_btcv)
        voxels[:2, :2, :2] = 10  # portal and splenic veins, an organ AMOS does not label
        _copy(image, root / "RawData" / "Training" / "img" / f"img{n:04d}.nii.gz")
        _write_like(voxels, label, root / "RawData" / "Training" / "label" / f"label{n:04d}.nii.gz")
        expected = _array(label)
        expected[expected >= 13] = 0  # duodenum, bladder, prostate/uterus: not BTCV organs
        expected[:2, :2, :2] = 13
        cases[f"btcv_{n:04d}"] = (image, expected)
    _copy(phantom["test"][0], root / "RawData" / "Testing" / "img" / "img0061.nii.gz")
    return cases


def test_btcv(phantom, nnunet_env, tmp_path):
    cases = _btcv_source(phantom, tmp_path / "btcv")
    assert _convert(nnunet_env, "btcv", tmp_path / "btcv", "--dataset-id", "117") == 0
    _check_output(nnunet_env["nnUNet_raw"] / "Dataset117_BTCV", btcv.LABELS, cases, n_test=1)
    assert btcv.LABELS["portal and splenic veins"] == 13 and btcv.LABELS["pancreas"] == AMOS_LABELS["pancreas"]


def test_segthor(phantom, nnunet_env, tmp_path):
    src = tmp_path / "segthor"
    cases = {}
    for n, (image, label) in enumerate(zip(phantom["images"], phantom["labels"]), start=1):
        patient = f"Patient_{n:02d}"
        voxels = _relabel(_array(label), {AMOS_LABELS["esophagus"]: 1, AMOS_LABELS["aorta"]: 4})
        _copy(image, src / "train" / patient / f"{patient}.nii.gz")
        _write_like(voxels, label, src / "train" / patient / "GT.nii.gz")
        cases[patient] = (image, voxels)
    _copy(phantom["test"][0], src / "test" / "Patient_41.nii.gz")
    assert _convert(nnunet_env, "segthor", src) == 0
    out = nnunet_env["nnUNet_raw"] / "Dataset055_SegTHOR"
    _check_output(out, {"background": 0, "esophagus": 1, "heart": 2, "trachea": 3, "aorta": 4}, cases, n_test=1)


def test_abdomenatlas_merges_masks(phantom, nnunet_env, tmp_path):
    src = tmp_path / "AbdomenAtlas1.0Mini"
    cases = {}
    for n, (image, label) in enumerate(zip(phantom["images"], phantom["labels"]), start=1):
        case = src / f"BDMAP_{n:08d}"
        _copy(image, case / "ct.nii.gz")
        voxels = _array(label)
        expected = np.zeros_like(voxels)
        for mask_name, organ in abdomenatlas.MASKS.items():
            if n == 2 and mask_name == "pancreas":
                continue  # a missing mask: organ absent
            _write_like(voxels == AMOS_LABELS[organ], label, case / "segmentations" / f"{mask_name}.nii.gz")
            expected[voxels == AMOS_LABELS[organ]] = abdomenatlas.LABELS[organ]
        _write_like(voxels == AMOS_LABELS["duodenum"], label, case / "segmentations" / "duodenum.nii.gz")
        cases[case.name] = (image, expected)
    assert _convert(nnunet_env, "abdomenatlas", src) == 0
    out = nnunet_env["nnUNet_raw"] / "Dataset224_AbdomenAtlasMini"
    _check_output(out, abdomenatlas.LABELS, cases, n_test=0)
    notes = json.loads((out / "conversion.json").read_text())["notes"]
    assert any("duodenum" in note and "ignored" in note for note in notes)
    assert any("BDMAP_00000002" in note and "pancreas" in note for note in notes)


def test_bad_label_geometry_names_the_file_and_writes_nothing(phantom, nnunet_env, tmp_path, capsys):
    _btcv_source(phantom, tmp_path / "btcv")
    bad = tmp_path / "btcv" / "RawData" / "Training" / "label" / "label0002.nii.gz"
    label = sitk.ReadImage(str(bad))
    sitk.WriteImage(label[1:, :, :], str(bad), useCompression=True)
    assert _convert(nnunet_env, "btcv", tmp_path / "btcv") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "size" in err[0]
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_existing_dataset_needs_overwrite(phantom, nnunet_env, tmp_path, capsys):
    _btcv_source(phantom, tmp_path / "btcv")
    assert _convert(nnunet_env, "btcv", tmp_path / "btcv") == 0
    assert _convert(nnunet_env, "btcv", tmp_path / "btcv") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _convert(nnunet_env, "btcv", tmp_path / "btcv", "--overwrite") == 0
    assert [p.name for p in nnunet_env["nnUNet_raw"].iterdir()] == ["Dataset017_BTCV"]


def test_wrong_layout_is_one_line(nnunet_env, tmp_path, capsys):
    assert _convert(nnunet_env, "segthor", tmp_path) == 2
    assert "Patient_XX" in capsys.readouterr().err


def _orphan_layouts(phantom, root):
    """Each converter's published layout with one label map whose image is missing: (name, source, orphan)."""
    (a, _), (la, lb) = phantom["images"], phantom["labels"]
    amos = root / "amos"
    _copy(a, amos / "imagesTr" / "amos_0001.nii.gz")
    _copy(la, amos / "labelsTr" / "amos_0001.nii.gz")
    _copy(la, amos / "labelsTr" / "amos_0507.nii.gz")  # an MRI label: left out on purpose, not an orphan
    _copy(lb, amos / "labelsVa" / "amos_0002.nii.gz")  # no imagesVa/amos_0002
    flare = root / "flare" / "FLARE22"
    _copy(a, flare / "images" / "FLARE22_Tr_0001_0000.nii.gz")
    _copy(la, flare / "labels" / "FLARE22_Tr_0001.nii.gz")
    _copy(lb, flare / "labels" / "FLARE22_Tr_0002.nii.gz")
    btcv_root = root / "btcv"
    _btcv_source(phantom, btcv_root)
    (btcv_root / "RawData" / "Training" / "img" / "img0002.nii.gz").unlink()
    segthor = root / "segthor"
    _copy(a, segthor / "train" / "Patient_01" / "Patient_01.nii.gz")
    _copy(la, segthor / "train" / "Patient_01" / "GT.nii.gz")
    _copy(lb, segthor / "train" / "Patient_02" / "GT.nii.gz")
    atlas = root / "atlas"
    _copy(a, atlas / "BDMAP_00000001" / "ct.nii.gz")
    _copy(la, atlas / "BDMAP_00000001" / "segmentations" / "liver.nii.gz")
    _copy(lb, atlas / "BDMAP_00000002" / "segmentations" / "liver.nii.gz")
    return [("amos", amos, amos / "labelsVa" / "amos_0002.nii.gz"),
            ("flare22", flare, flare / "labels" / "FLARE22_Tr_0002.nii.gz"),
            ("btcv", btcv_root, btcv_root / "RawData" / "Training" / "label" / "label0002.nii.gz"),
            ("segthor", segthor, segthor / "train" / "Patient_02" / "GT.nii.gz"),
            ("abdomenatlas", atlas, atlas / "BDMAP_00000002" / "segmentations")]


def test_a_label_without_its_image_is_refused_by_every_converter(phantom, nnunet_env, tmp_path, capsys):
    """A partial download (a label whose image is missing) is one line naming the label, nothing written:
    converting without it would drop a labelled case silently."""
    for name, source, orphan in _orphan_layouts(phantom, tmp_path):
        assert _convert(nnunet_env, name, source) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(orphan) in err[0] and "missing" in err[0], (name, err)
        assert list(nnunet_env["nnUNet_raw"].iterdir()) == [], name
