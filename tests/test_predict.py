"""`medgmae_predict`: nnU-Net's prediction with nothing exported, on a small results folder.

The results folder is what medgmae_train leaves (plans.json, dataset.json, fold_0/checkpoint_final.pth),
written by our trainer as nnU-Net builds it, with untrained weights of a small UNETR; one 40^3 case
is predicted in one process, so the test costs seconds.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from finetune_support import DATASET, minimal_preprocessed, small_trainer

TRAINER = "MedGMAETrainer_scratch_f100"


@pytest.fixture
def clean_env(monkeypatch):
    """No nnUNet_extTrainer, and whatever the command sets is undone afterwards (setenv first, so
    that monkeypatch restores the variable even when it was not set before)."""
    monkeypatch.setenv("nnUNet_extTrainer", "")
    monkeypatch.delenv("nnUNet_extTrainer")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # nnU-Net's CPU prediction takes every core


@pytest.fixture
def trained(nnunet_env, tmp_path):
    """A results folder for TRAINER and a folder with one test image; returns the image folder."""
    plans = minimal_preprocessed(nnunet_env["nnUNet_preprocessed"])
    trainer, fold = small_trainer(nnunet_env["nnUNet_results"], TRAINER, plans)
    trainer.initialize()
    trainer.save_checkpoint(str(fold / "checkpoint_final.pth"))
    (fold.parent / "plans.json").write_text(json.dumps(trainer.plans_manager.plans))
    (fold.parent / "dataset.json").write_text(json.dumps(trainer.dataset_json))
    images = tmp_path / "imagesTs"
    images.mkdir()
    hu = np.random.default_rng(0).uniform(-200, 300, (40, 40, 40)).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((1.5, 1.5, 1.5))
    sitk.WriteImage(image, str(images / "case_000_0000.nii.gz"))
    return images


def test_predict_with_nothing_exported_gives_what_nnunet_predict_gives_with_the_export(
        trained, nnunet_env, clean_env, tmp_path, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from medgmae_trainers.finetune import EXT_TRAINER_DIR
    from medgmae_trainers.finetune.predict_cli import main

    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        recursive_find_trainer_class_by_name(TRAINER)  # what plain nnUNetv2_predict meets without the export
    fast = ["-step_size", "1", "--disable_tta", "-npp", "0", "-nps", "0"]
    assert main(["-i", str(trained), "-o", str(tmp_path / "ours"), "-d", "Phantom", "-tr", TRAINER,
                 "-device", "cpu", "--no-pbar", *fast]) == 0
    seg = sitk.ReadImage(str(tmp_path / "ours" / "case_000.nii.gz"))
    assert seg.GetSize() == (40, 40, 40) and seg.GetSpacing() == (1.5, 1.5, 1.5)
    ours = sitk.GetArrayFromImage(seg)
    assert set(np.unique(ours)) <= {0, 1, 2, 3}

    # nnUNetv2_predict with the documented export reads the same folder to the same segmentation
    monkeypatch.setenv("nnUNet_extTrainer", str(EXT_TRAINER_DIR))
    monkeypatch.setattr(sys, "argv", ["nnUNetv2_predict", "-i", str(trained), "-o", str(tmp_path / "nnunet"),
                                      "-d", "990", "-tr", TRAINER, "-p", "MedGMAEPlans", "-c", "3d_fullres",
                                      "-f", "0", "-device", "cpu", "--disable_progress_bar", *fast])
    predict_entry_point()
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nnunet" / "case_000.nii.gz")))
    assert np.array_equal(ours, theirs)


def test_predict_refuses_bad_arguments_with_one_line(trained, clean_env, tmp_path, capsys):
    from medgmae_trainers.finetune.predict_cli import main

    def run(*args, images=trained, trainer=TRAINER):
        code = main(["-i", str(images), "-o", str(tmp_path / "out"), "-d", "Phantom", "-tr", trainer,
                     "-device", "cpu", *map(str, args)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        return err[0]

    assert "no such folder of input images" in run(images=tmp_path / "missing")
    line = run(trainer="MedGMAETrainer_medgmae_f10")
    assert "no such results folder" in line and f"{TRAINER}__MedGMAEPlans__3d_fullres" in line  # says what exists
    assert "no dataset matches 'NoSuchData'" in run("-d", "NoSuchData")  # the last -d wins
    assert "fold_1/checkpoint_final.pth: no such checkpoint" in run("-f", "1")
    assert "give fold numbers or 'all'" in run("-f", "first")
    assert "no fold_*/checkpoint_best.pth" in run("-chk", "checkpoint_best.pth")
    assert "-step_size 2.0 is outside (0, 1]" in run("-step_size", "2")
    assert "-part_id 1 must be in 0..0" in run("-part_id", "1")
    if not torch.cuda.is_available():
        assert "-device cuda: no CUDA device" in run("-device", "cuda")
    with pytest.raises(SystemExit) as stop:  # argparse's own errors: usage, then the one error line, status 2
        main(["-o", str(tmp_path / "out"), "-d", "Phantom", "-tr", TRAINER])
    assert stop.value.code == 2 and "the following arguments are required: -i" in capsys.readouterr().err
