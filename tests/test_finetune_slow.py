"""End to end on a small cropped phantom: medgmae_train (one short CPU epoch, pretrained encoder on a
larger token grid), nnU-Net's validation summary, the run record, nnUNetv2_predict on the results
folder, and the refusal to overwrite or to continue with other settings. Slow: several minutes on two cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from finetune_support import DATASET, fake_checkpoint
from plan_support import make_phantom, run_module

pytestmark = pytest.mark.slow

TRAINER = "MedGMAETrainer_medgmae_f50"


@pytest.fixture
def phantom_plans(nnunet_env, monkeypatch):
    monkeypatch.setenv("nnUNet_compile", "f")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    make_phantom(nnunet_env["nnUNet_raw"], n_train=5, n_test=1)
    r = run_module("preprocessing.plan_and_preprocess", ["-d", "Phantom", "-np", "1", "--no-pbar"], nnunet_env)
    assert r.returncode == 0, r.stderr
    return nnunet_env


def test_train_validate_and_predict(phantom_plans, tmp_path):
    env = phantom_plans
    ckpt = tmp_path / "pretrained.pt"
    fake_checkpoint(ckpt, crop=96, embed=48, depth=3, heads=3)  # grid 6 -> fine-tuning grid 3
    base = ["Phantom", "3d_fullres", "--fraction", "0.5", "--pretrained", ckpt, "--device", "cpu", "--no-pbar",
            "--patch-size", "48"]  # CPU-sized tiles
    args = [*base, "--epochs", "1", "--iters-per-epoch", "2"]
    r = run_module("medgmae_trainers.finetune.cli", args, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    fold = env["nnUNet_results"] / DATASET / f"{TRAINER}__MedGMAEPlans__3d_fullres" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    # nnU-Net's Dice is NaN for a label absent from both reference and prediction (likely in a cropped case)
    dice = [m["Dice"] for case in summary["metric_per_case"] for m in case["metrics"].values()]
    assert len(dice) == 15 * len(summary["metric_per_case"]) and all(np.isnan(d) or 0 <= d <= 1 for d in dice)
    assert (fold / "checkpoint_final.pth").is_file() and (fold.parent / "plans.json").is_file()
    record = json.loads((fold / "medgmae_finetune.json").read_text())
    split = json.loads((env["nnUNet_preprocessed"] / DATASET / "splits_final.json").read_text())[0]
    assert record["status"] == "finished" and record["trainer"] == TRAINER and record["init"] == "medgmae"
    assert record["init_display"] == "MedGMAE" and record["pretrained_checkpoint"] == str(ckpt.resolve())
    assert len(record["train_cases"]) == 2 and set(record["train_cases"]) <= set(split["train"])
    assert record["val_cases"] == split["val"] and len(summary["metric_per_case"]) == len(split["val"])
    assert record["results"]["encoder_loading"]["pos_embed_interpolated"] == {"from": [6, 6, 6], "to": [3, 3, 3]}
    assert sorted(p.name for p in (fold / "validation").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in split["val"]]
    config = json.loads((fold.parent / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert config["architecture"]["arch_kwargs"]["hidden_size"] == 48 and config["patch_size"] == [48, 48, 48]
    assert config["resampling_fn_probabilities"] == "resample_torch_fornnunet"

    # nnU-Net's own predictor rebuilds the network from the results folder
    from medgmae_trainers.finetune import EXT_TRAINER_DIR

    out = tmp_path / "pred"
    images = env["nnUNet_raw"] / DATASET / "imagesTs"
    penv = {**os.environ, **{k: str(v) for k, v in env.items()}, "nnUNet_extTrainer": str(EXT_TRAINER_DIR)}
    predict = Path(sys.executable).parent / "nnUNetv2_predict"
    r = subprocess.run([str(predict), "-i", str(images), "-o", str(out), "-d", "990", "-tr", TRAINER,
                        "-p", "MedGMAEPlans", "-c", "3d_fullres", "-f", "0", "-device", "cpu", "-step_size", "1",
                        "--disable_tta", "-npp", "1", "-nps", "1"], env=penv, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (image,) = sorted(images.glob("*_0000.nii.gz"))
    seg = sitk.ReadImage(str(out / image.name.replace("_0000.nii.gz", ".nii.gz")))
    assert seg.GetSize() == sitk.ReadImage(str(image)).GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= set(range(16))

    # the run is never overwritten, and --continue keeps its settings
    r = run_module("medgmae_trainers.finetune.cli", args, env)
    assert r.returncode == 2 and "holds a run already" in r.stderr
    r = run_module("medgmae_trainers.finetune.cli", [*base, "--epochs", "3", "--iters-per-epoch", "2", "--continue"],
                   env)
    assert r.returncode == 2 and "epochs: 1 -> 3" in r.stderr
