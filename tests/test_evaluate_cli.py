"""`medgmae_evaluate --ref/--pred`: nnU-Net's summary layout and numbers, and bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evaluate_support import perturb, reference_case, write_dataset_json, write_label_map
from evaluation.cli import main


@pytest.fixture
def folders(tmp_path):
    """gt/ and pred/ with four cases: ordinary ones, an empty prediction, a reference without the kidney."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i in range(4):
        ref = reference_case(i, with_kidney=i != 2)
        write_label_map(gt / f"case_{i}.nii.gz", ref)
        p = np.zeros_like(ref) if i == 1 else perturb(ref, 10 + i, 0.03)
        if i == 2:
            p[p == 3] = 0   # kidney in neither reference nor prediction: NaN, left out of the mean
        write_label_map(pred / f"case_{i}.nii.gz", p)
    write_dataset_json(gt / "dataset.json")
    return gt, pred


def run(argv, capsys):
    code = main([*map(str, argv), "--no-pbar"])
    return code, capsys.readouterr().err


def test_matches_nnunet_compute_metrics_on_folder(folders, tmp_path, capsys):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    gt, pred = folders
    out = tmp_path / "ours" / "summary.json"
    code, err = run(["--ref", gt, "--pred", pred, "-o", out], capsys)
    assert code == 0, err
    theirs = compute_metrics_on_folder(str(gt), str(pred), None, SimpleITKIO(), ".nii.gz", [1, 2, 3],
                                       num_processes=1)
    ours = json.loads(out.read_text())
    assert set(ours) >= {"metric_per_case", "mean", "foreground_mean"}
    by_file = {c["prediction_file"]: c for c in ours["metric_per_case"]}
    assert len(by_file) == len(theirs["metric_per_case"]) == 4
    for case in theirs["metric_per_case"]:
        mine = by_file[case["prediction_file"]]["metrics"]
        for label, metrics in case["metrics"].items():
            for name in ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_ref", "n_pred"):
                assert mine[str(label)][name] == pytest.approx(metrics[name], nan_ok=True), (case, label, name)
    for label in (1, 2, 3):
        for name in ("Dice", "IoU", "TP"):
            assert ours["mean"][str(label)][name] == pytest.approx(theirs["mean"][label][name])
    assert ours["foreground_mean"]["Dice"] == pytest.approx(theirs["foreground_mean"]["Dice"])
    # the empty prediction scores 0; the kidney absent from case 2 is NaN and left out of the mean
    case1 = by_file[str(pred / "case_1.nii.gz")]["metrics"]
    assert case1["1"]["Dice"] == 0 and case1["1"]["NSD"] == 0
    case2 = by_file[str(pred / "case_2.nii.gz")]["metrics"]["3"]
    assert math.isnan(case2["Dice"]) and math.isnan(case2["NSD"])
    nsd = [by_file[str(pred / f"case_{i}.nii.gz")]["metrics"]["3"]["NSD"] for i in (0, 1, 3)]
    assert ours["mean"]["3"]["NSD"] == pytest.approx(np.mean(nsd))
    # nnU-Net's own reader takes our file; names and the NSD tolerance ride along
    assert load_summary_json(str(out))["mean"][1]["Dice"] == pytest.approx(ours["mean"]["1"]["Dice"])
    assert ours["medgmae"]["labels"] == {"1": "spleen", "2": "liver", "3": "kidney"}
    assert ours["medgmae"]["nsd_tolerance_mm"] == 1.0
    assert (out.parent / "medgmae_evaluate.log").is_file()
    assert json.loads((out.parent / "medgmae_evaluate.json").read_text())["results"]["cases"] == 4


def test_labels_subset_and_default_output(folders, capsys):
    gt, pred = folders
    code, err = run(["--ref", gt, "--pred", pred, "-l", "2"], capsys)
    assert code == 0, err
    summary = json.loads((pred / "summary_medgmae.json").read_text())
    assert list(summary["mean"]) == ["2"]
    assert summary["foreground_mean"]["Dice"] == pytest.approx(summary["mean"]["2"]["Dice"])


@pytest.mark.slow
def test_parallel_workers_give_the_same_summary(folders, tmp_path, capsys):
    """-np 2 starts spawn workers (each imports torch through MONAI: slow on a busy machine)."""
    gt, pred = folders
    for np_, name in ((1, "one.json"), (2, "two.json")):
        code, err = run(["--ref", gt, "--pred", pred, "-np", np_, "-o", tmp_path / name], capsys)
        assert code == 0, err
    one, two = (json.loads((tmp_path / n).read_text()) for n in ("one.json", "two.json"))
    assert json.dumps(one["metric_per_case"]) == json.dumps(two["metric_per_case"])


def _assert_refused(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if "error:" in line] == lines[-1:], err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_prediction(folders, tmp_path, capsys):
    gt, pred = folders
    (pred / "case_3.nii.gz").unlink()
    out = tmp_path / "s.json"
    _assert_refused(*run(["--ref", gt, "--pred", pred, "-o", out], capsys), "case_3", "--chill")
    assert not out.exists()
    code, err = run(["--ref", gt, "--pred", pred, "-o", out, "--chill"], capsys)
    assert code == 0, err
    assert len(json.loads(out.read_text())["metric_per_case"]) == 3


def test_prediction_without_reference(folders, capsys):
    gt, pred = folders
    write_label_map(pred / "stray.nii.gz", reference_case(0))
    _assert_refused(*run(["--ref", gt, "--pred", pred], capsys), "no reference", "stray")


@pytest.mark.parametrize("change,word", [
    (dict(origin=(-10.0, 5.0, 33.0)), "origin"),
    (dict(spacing=(0.8, 0.9, 2.5)), "spacing"),
    (dict(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)), "direction"),
])
def test_geometry_mismatch(folders, tmp_path, capsys, change, word):
    gt, pred = folders
    write_label_map(pred / "case_2.nii.gz", reference_case(2), **change)
    out = tmp_path / "s.json"
    _assert_refused(*run(["--ref", gt, "--pred", pred, "-o", out], capsys),
                    str(pred / "case_2.nii.gz"), word, "geometry differs")
    assert not out.exists()


def test_size_mismatch(folders, capsys):
    gt, pred = folders
    write_label_map(pred / "case_0.nii.gz", reference_case(0)[:, :, :-2])
    _assert_refused(*run(["--ref", gt, "--pred", pred], capsys), "case_0.nii.gz", "size")


def test_unknown_label_ids(folders, capsys):
    gt, pred = folders
    _assert_refused(*run(["--ref", gt, "--pred", pred, "-l", "1", "7"], capsys), "[7]", "3 (kidney)")
    bad = reference_case(1)
    bad[0, 0, 0] = 9
    write_label_map(pred / "case_1.nii.gz", bad)
    _assert_refused(*run(["--ref", gt, "--pred", pred], capsys), "case_1.nii.gz", "[9]", "not declared")


def test_no_dataset_json_needs_labels(tmp_path, capsys):
    gt, pred = tmp_path / "g", tmp_path / "p"
    write_label_map(gt / "a.nii.gz", reference_case(0))
    write_label_map(pred / "a.nii.gz", reference_case(0))
    _assert_refused(*run(["--ref", gt, "--pred", pred], capsys), "-l")
    code, err = run(["--ref", gt, "--pred", pred, "-l", "1", "2"], capsys)
    assert code == 0, err
    summary = json.loads((pred / "summary_medgmae.json").read_text())
    assert summary["foreground_mean"]["Dice"] == 1.0 and summary["foreground_mean"]["NSD"] == 1.0


def test_unreadable_file_and_missing_folder(folders, tmp_path, capsys):
    gt, pred = folders
    (pred / "case_0.nii.gz").write_bytes(b"not an image")
    _assert_refused(*run(["--ref", gt, "--pred", pred], capsys), "case_0.nii.gz", "cannot be read")
    _assert_refused(*run(["--ref", tmp_path / "nope", "--pred", pred], capsys), "nope", "does not exist")


def test_verbose_shows_the_traceback(folders, capsys):
    gt, pred = folders
    from medgmae_plans.runtime import UserError

    with pytest.raises(UserError):
        main(["--ref", str(gt), "--pred", str(pred), "-l", "7", "--verbose"])
