"""The synthetic phantom: nnU-Net validity, anatomy, HU, geometry, determinism and bad input."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.labels import AMOS_LABELS
from preprocessing.phantom import case_spec, generate_dataset
from preprocessing.phantom import dataset as phantom_dataset
from preprocessing.phantom.anatomy import TISSUES
from preprocessing.phantom.cli import main as make_phantom

SMALL = dict(n_train=5, n_test=1, n_unlabeled=1, seed=0, spacing_scale=3.0, workers=1, pbar=False)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("raw"), **SMALL, log=lambda *_: None)


def _read(path: Path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def _train_cases(folder: Path):
    for image_path in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
        case = image_path.name[: -len("_0000.nii.gz")]
        yield case, image_path, folder / "labelsTr" / f"{case}.nii.gz"


def test_nnunet_dataset_integrity_passes(small_dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(small_dataset), num_processes=1)  # raises on any problem
    ds = json.loads((small_dataset / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == AMOS_LABELS and ds["numTraining"] == 5
    assert len(list((small_dataset / "imagesTs").glob("*.nii.gz"))) == 1
    assert len(list((small_dataset / "imagesUnlabeled").glob("*_0000.nii.gz"))) == 1


# Median HU inside each bulky organ must match its tissue in the case's phase (phases.HU_BY_PHASE or,
# for tissues that do not enhance, anatomy.TISSUES), within the scanner offset and partial volume.
ORGAN_TISSUE = {"liver": "liver", "spleen": "spleen", "gall bladder": "bile", "pancreas": "pancreas"}


def test_organ_hounsfield_units_match_their_tissue(small_dataset):
    from preprocessing.phantom.phases import HU_BY_PHASE, SCANNER_OFFSET_HU

    cases = {c["case"]: c for c in json.loads((small_dataset / "phantom_cases.json").read_text())}
    seen = set()
    for case, image_path, label_path in _train_cases(small_dataset):
        phase = cases[case]["phase"]
        _, hu = _read(image_path)
        _, lab = _read(label_path)
        assert (hu[:, :, 0] < -900).mean() > 0.9  # air beside the patient
        for organ, tissue in ORGAN_TISSUE.items():
            inside = hu[lab == AMOS_LABELS[organ]]
            if inside.size > 50:
                seen.add(organ)
                lo, hi = HU_BY_PHASE[tissue][phase] if tissue in HU_BY_PHASE else (TISSUES[tissue][0],) * 2
                assert lo - SCANNER_OFFSET_HU - 20 < np.median(inside) < hi + SCANNER_OFFSET_HU + 20, (organ, phase)
        stomach = hu[lab == AMOS_LABELS["stomach"]]
        assert (stomach < -900).any() and (np.abs(stomach - 15) < 30).mean() > 0.2  # air over fluid
        assert (hu > 500).sum() > 100  # bone: spine and ribs
    assert {"liver", "spleen", "pancreas", "gall bladder"} <= seen


def test_every_case_has_the_organs_its_scan_range_covers(small_dataset):
    cases = {c["case"]: c for c in json.loads((small_dataset / "phantom_cases.json").read_text())}
    for case, _, label_path in _train_cases(small_dataset):
        _, lab = _read(label_path)
        present = set(np.unique(lab).tolist()) - {0}
        expected = set(cases[case]["labels_expected"])
        assert {6, 8, 10} <= expected  # every scan covers the liver, aorta and pancreas (some cut the dome or kidneys)
        assert expected <= present, (case, expected - present)
        assert present <= set(range(1, 16))


def test_image_and_label_share_geometry(small_dataset):
    for _, image_path, label_path in _train_cases(small_dataset):
        img, _ = _read(image_path)
        lab, _ = _read(label_path)
        assert img.GetSize() == lab.GetSize()
        assert np.allclose(img.GetSpacing(), lab.GetSpacing())
        assert np.allclose(img.GetOrigin(), lab.GetOrigin())
        assert np.allclose(img.GetDirection(), lab.GetDirection())


def test_spacing_orientation_and_extent_vary_across_cases():
    specs = [case_spec(0, "train", i)[0] for i in range(20)]
    in_plane = [s.spacing[1] for s in specs]
    slices = [s.spacing[0] for s in specs]
    assert min(in_plane) >= 0.6 and max(in_plane) <= 1.0 and max(in_plane) - min(in_plane) > 0.2
    assert min(slices) >= 1.0 and max(slices) <= 5.0 and max(slices) - min(slices) > 2.0
    assert len({s.flips for s in specs}) >= 2  # some cases written with flipped direction matrices
    assert len({s.pelvis for s in specs}) == 2  # upper-abdomen and abdomen-pelvis coverage


def test_flipped_direction_is_written_to_the_header(small_dataset):
    cases = json.loads((small_dataset / "phantom_cases.json").read_text())
    for c in cases:
        if c["kind"] == "unlabeled":
            continue
        folder = "imagesTr" if c["kind"] == "train" else "imagesTs"
        img = sitk.ReadImage(str(small_dataset / folder / f"{c['case']}_0000.nii.gz"))
        diag = np.diag(np.array(img.GetDirection()).reshape(3, 3))
        assert list(diag < 0) == list(reversed(c["flips_zyx"]))


def test_same_seed_same_bytes_and_other_seed_differs(small_dataset, tmp_path):
    again = generate_dataset(tmp_path / "a", **{**SMALL, "n_train": 2, "n_test": 0, "n_unlabeled": 0},
                             log=lambda *_: None)
    other = generate_dataset(tmp_path / "b", **{**SMALL, "n_train": 1, "n_test": 0, "n_unlabeled": 0, "seed": 1},
                             log=lambda *_: None)

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for name in ("imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        assert digest(again / name) == digest(small_dataset / name)
    assert digest(other / "imagesTr/phantom_000_0000.nii.gz") != digest(small_dataset / "imagesTr/phantom_000_0000.nii.gz")


def _run_cli(args, raw: Path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(raw))
    code = make_phantom(args + ["--no-pbar", "-np", "1"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_rejects_zero_cases(tmp_path, monkeypatch, capsys):
    code, err = _run_cli(["-n", "0"], tmp_path / "raw", monkeypatch, capsys)
    assert code != 0 and len([l for l in err if "error" in l]) == 1 and "-n must be at least 1" in err[-1]
    assert not (tmp_path / "raw").exists()


def test_cli_rejects_an_unwritable_output_folder(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _run_cli(["-n", "1", "--spacing-scale", "4"], blocker / "raw", monkeypatch, capsys)
    assert code != 0 and "cannot be made" in err[-1] and str(blocker / "raw") in err[-1]


def test_cli_refuses_existing_dataset_id_with_other_content(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    assert _run_cli(["-n", "1", "--spacing-scale", "4"], raw, monkeypatch, capsys)[0] == 0
    image = raw / "Dataset990_AbdomenPhantom" / "imagesTr" / "phantom_000_0000.nii.gz"
    before = image.read_bytes()
    code, err = _run_cli(["-n", "1", "--spacing-scale", "4", "--seed", "7"], raw, monkeypatch, capsys)
    assert code != 0 and "already exists with different content" in err[-1]
    assert image.read_bytes() == before
    # the same settings again are reused, not rewritten
    assert _run_cli(["-n", "1", "--spacing-scale", "4"], raw, monkeypatch, capsys)[0] == 0
    # another dataset holding the id is refused too
    (raw / "Dataset991_Other").mkdir()
    code, err = _run_cli(["-n", "1", "--dataset-id", "991", "--spacing-scale", "4"], raw, monkeypatch, capsys)
    assert code != 0 and "already taken" in err[-1]
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset990_AbdomenPhantom", "Dataset991_Other"]


def test_a_phantom_of_an_older_generator_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    assert _run_cli(["-n", "1", "--spacing-scale", "4"], raw, monkeypatch, capsys)[0] == 0
    manifest = raw / "Dataset990_AbdomenPhantom" / "phantom.json"
    old = json.loads(manifest.read_text())
    old["settings"]["generator_version"] = 2
    manifest.write_text(json.dumps(old))
    code, err = _run_cli(["-n", "1", "--spacing-scale", "4"], raw, monkeypatch, capsys)
    assert code == 2 and len(err) == 1
    assert "generator version 2" in err[0] and "version 3" in err[0] and "remove it" in err[0]


def test_a_crash_mid_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = phantom_dataset.render_case

    def flaky(spec, seed):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(spec, seed)

    monkeypatch.setattr(phantom_dataset, "render_case", flaky)
    with pytest.raises(RuntimeError):
        generate_dataset(tmp_path, n_train=3, spacing_scale=4.0, workers=1, pbar=False, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_preview_png_shows_slices_with_labels(small_dataset, tmp_path):
    from preprocessing.phantom.preview import write_preview

    png = write_preview(small_dataset, tmp_path / "preview.png")
    import matplotlib.image as mpimg

    pixels = mpimg.imread(png)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 1000
    rgb = pixels[..., :3]
    assert (rgb.max(-1) - rgb.min(-1) > 0.2).mean() > 0.01  # coloured label overlays are present


def test_the_declared_reader_gives_every_case_one_anatomical_layout(small_dataset):
    """Through the reader its dataset.json names, the liver lies on the same array side (x) and the
    cases' top on the same end (z) whether a case was stored flipped or not; the default reader
    (the raw arrays) does not, so a flipped case would teach the network the other layout."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    meta = json.loads((small_dataset / "dataset.json").read_text())
    cases = {c["case"]: c for c in json.loads((small_dataset / "phantom_cases.json").read_text())}
    liver, aorta = AMOS_LABELS["liver"], AMOS_LABELS["aorta"]
    reader = determine_reader_writer_from_dataset_json(meta, str(next((small_dataset / "labelsTr").iterdir())))()
    sides, raw_sides = set(), set()
    for case, _, label_path in _train_cases(small_dataset):
        seg = reader.read_seg(str(label_path))[0][0]
        raw = _read(label_path)[1]
        for array, found in ((seg, sides), (raw, raw_sides)):
            # the liver lies right of the aorta and above the pancreas, duodenum and right kidney (a
            # scan may start below the liver dome, so the array's middle is no landmark)
            z, _, x = np.nonzero(array == liver)
            _, _, xa = np.nonzero(array == aorta)
            zb, _, _ = np.nonzero(np.isin(array, [AMOS_LABELS[o] for o in ("pancreas", "duodenum", "right kidney")]))
            found.add((bool(x.mean() > xa.mean()), bool(z.mean() > zb.mean())))
        assert cases[case]["flips_zyx"] in ([False] * 3, [True] * 3, [True, False, False], [False, True, True])
    assert len(sides) == 1 and len(raw_sides) > 1
