"""`medgmae_evaluate --test`: a run predicts its dataset's test cases with its checkpoint, and is scored on them.

The run is test_predict's small results folder (untrained weights; the Dice is whatever it is), its
record marked finished; its dataset gets one test image and label in nnU-Net's raw layout.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import SimpleITK as sitk

from finetune_support import DATASET, labels_json
from test_predict import TRAINER, clean_env, trained  # noqa: F401 (fixtures)

from evaluation.cli import main


def _test_split(nnunet_env, images):
    raw = nnunet_env["nnUNet_raw"] / DATASET
    (raw / "labelsTs").mkdir(parents=True)
    shutil.copytree(images, raw / "imagesTs")
    (raw / "dataset.json").write_text(json.dumps(labels_json()))
    image = sitk.ReadImage(str(images / "case_000_0000.nii.gz"))
    label = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 4, (40, 40, 40)).astype(np.uint8))
    label.CopyInformation(image)
    sitk.WriteImage(label, str(raw / "labelsTs" / "case_000.nii.gz"))
    return raw


def _finished(nnunet_env):
    fold = next(nnunet_env["nnUNet_results"].glob(f"{DATASET}/{TRAINER}__*/fold_0"))
    record = json.loads((fold / "medgmae_finetune.json").read_text())
    (fold / "medgmae_finetune.json").write_text(json.dumps({**record, "status": "finished"}))
    return fold


def test_runs_are_scored_on_their_predicted_test_cases(nnunet_env, trained, clean_env, tmp_path):  # noqa: F811
    raw = _test_split(nnunet_env, trained)
    fold = _finished(nnunet_env)
    out = tmp_path / "report"
    assert main([str(fold), "--test", "--no-nsd", "--no-pbar", "-o", str(out)]) == 0
    prediction = fold / "test" / "case_000.nii.gz"
    summary = json.loads((fold / "test" / "summary_medgmae.json").read_text())
    assert [c["reference_file"] for c in summary["metric_per_case"]] == [str(raw / "labelsTs" / "case_000.nii.gz")]
    assert sorted(p.name for p in (fold / "test").iterdir()) == ["case_000.nii.gz", "summary_medgmae.json"]
    run = json.loads((out / "medgmae_evaluate.json").read_text())["results"]
    assert run["cases"] == "test" and run["runs"][0]["summary"] == str(fold / "test" / "summary_medgmae.json")
    # the prediction is on the label's grid, with the trained labels only
    predicted = sitk.ReadImage(str(prediction))
    assert predicted.GetSize() == (40, 40, 40)
    assert set(np.unique(sitk.GetArrayFromImage(predicted))) <= {0, 1, 2, 3}

    made = prediction.stat().st_mtime_ns
    assert main([str(fold), "--test", "--no-nsd", "--no-pbar", "-o", str(out)]) == 0
    assert prediction.stat().st_mtime_ns == made  # reused: nothing it was made from changed
    (fold / "checkpoint_final.pth").touch()
    assert main([str(fold), "--test", "--no-nsd", "--no-pbar", "-o", str(out)]) == 0
    assert prediction.stat().st_mtime_ns != made  # a new checkpoint predicts again


def test_missing_test_cases_are_one_line(nnunet_env, trained, clean_env, tmp_path, capsys):  # noqa: F811
    fold = _finished(nnunet_env)
    assert main([str(fold), "--test", "--no-nsd", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "imagesTs: no test cases for --test" in err[0]
    assert not (fold / "test").exists()
