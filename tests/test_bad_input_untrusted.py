"""The bad-input catalogue, second part (issue 27): nothing runs that should not, nothing is accepted wrongly.

63 kinds, one fault in one command per test (checked as in tests/test_bad_input.py: exit code 2, one
line naming the file or argument, no traceback, output folders unchanged), and 4 checks of what
is accepted (our own checkpoints, old and new, still load; the lock itself writes nothing; a refused
command's folder holding only its log is removed; `medgmae_reconstruct` logs a real loss at iteration 0,
not "nan"):

- 13: a pickle payload planted in every file a command unpickles: pretraining checkpoints
  (`medgmae_train --pretrained`, `medgmae_reconstruct --checkpoint`, `medgmae_pretrain --resume`,
  `medgmae_classify train --pretrained` / `predict --model`, `medgmae_register train --pretrained` /
  `predict --model`), nnU-Net checkpoints (`medgmae_predict`, `medgmae_train --continue`), nnU-Net's
  case `.pkl` (`medgmae_pretrain`, `medgmae_train`, `medgmae_reconstruct` of a `.b2nd`) and IXI's
  pickles (`medgmae_register convert ixi`): refused, and the payload's marker file is never written;
  our own checkpoints (RNG states in plain types) still load, older ones with numpy RNG states too;
- 19: images that cannot be CT in HU, in every command that reads one: an 8-bit pixel type (preprocessing,
  collections, `medgmae_reconstruct`, `medgmae_predict`, classification's reader), a NIfTI whose pixdim
  contradicts its sform (preprocessing, `medgmae_reconstruct`, `medgmae_predict`, `medgmae_evaluate`), a
  sheared direction matrix (collections, `medgmae_reconstruct`), NaN voxels (`medgmae_predict`, which
  nnU-Net would read as 0 HU); and `medgmae_predict`'s input folder: a 2D or 4D image, a name without
  `_0000` (an earlier prediction), another file ending, no images at all: refused before nnU-Net
  starts, `-o` not created;
- 8: a diverging fine-tuning (a NaN weight in the pretrained checkpoint): exit 2, one line naming the
  iteration and the lr, no final checkpoint; NaN and infinity refused by the one range check
  (`--lr`, `--tolerance`, `--cutoff`, `--spacing-scale`);
- 6: a second writer of a run or output folder (`medgmae_pretrain --out`, `medgmae_train` and its
  `--continue`, `medgmae_reconstruct --out`, `medgmae_evaluate -o`, `medgmae_predict -o`): one line naming
  the folder and the holder's pid, the first run's folder untouched;
- 11: arguments and inputs checked before work: `medgmae_train --patch-size` whose batch cannot fit the
  machine's memory (a lower bound, naming the limit); `medgmae_reconstruct` of a `_seg.b2nd` label map, of a
  `.b2nd` without its `.pkl` (its spacing), `--downsample` beyond the volume; `medgmae_pretrain
  --crop-size` of one ViT patch (nothing masked); `medgmae_train --fraction 1e-9` (blamed on --trainer
  before), a dataset without `numTraining` and fewer than 5 cases; `medgmae_classify train --size-xyz`
  not a multiple of the patch (before preprocessing); `medgmae_evaluate` of a 4D prediction;
  `medgmae_make_phantom --preview` a folder or a `.txt`;
- 4: nothing left behind: `medgmae_reconstruct` of an all-air volume (refused before its folder and log),
  `medgmae_evaluate` refused after opening its log in a new `-o` folder (the folder goes again),
  the work folder of a SIGKILLed `medgmae_make_phantom` (removed by the next run, a live one's kept), a
  label without its image in a raw dataset (ignored silently before), and in a source layout given
  to `medgmae_convert` (tests/test_convert.py, every converter);
- 2: full disks: an error that names no file ("writing ?") names the command's output folder; a cut or
  0-byte prediction that nnU-Net's export left (and called done) is refused, the full device named.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import SimpleITK as sitk

from bad_input_support import (CASE_IMAGE, CASE_LABEL, DATASET, refused, rewrite, set_nifti_spacing, small_ct,
                               write_ct)
from finetune_support import fake_checkpoint


class Payload:
    """Unpickling this writes its marker file: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload_ran"
    yield path
    assert not path.exists(), "the planted pickle payload ran"


def planted_checkpoint(path: Path, marker: Path, **extra) -> Path:
    """A pretraining checkpoint_final.pt as medgmae_pretrain writes it, with a payload in it."""
    ckpt = fake_checkpoint(path)
    torch.save({**ckpt, **extra, "payload": Payload(marker)}, path)
    return path


# ---------------------------------------------------------------- checkpoints

def test_train_pretrained_checkpoint_with_a_payload(preprocessed, tmp_path, capsys, marker):
    from medgmae_trainers.finetune.cli import main

    path = planted_checkpoint(tmp_path / "ckpt.pt", marker)
    refused(capsys, main, ["Phantom", "3d_fullres", "--device", "cpu", "--pretrained", path], path,
            "refused to load", "posix.system", unchanged=[preprocessed["nnUNet_results"]])


def test_reconstruct_checkpoint_with_a_payload(tmp_path, capsys, marker):
    from medgmae_trainers.reconstruction.cli import main

    volume = write_ct(tmp_path / "ct.nii.gz", small_ct())
    path = planted_checkpoint(tmp_path / "ckpt.pt", marker)
    refused(capsys, main, [volume, "--out", tmp_path / "out", "--iterations", "2", "--no-pbar", "--init", "medgmae",
                           "--checkpoint", path], path, "refused to load", unchanged=[tmp_path / "out"])
    assert not (tmp_path / "out").exists()


def test_pretrain_resume_checkpoint_with_a_payload(preprocessed, tmp_path, capsys, marker):
    from medgmae_trainers.pretrain.cli import main

    from test_bad_input import PRETRAIN_SMALL

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"format": "medgmae-pretrain/1", "step": 1, "payload": Payload(marker)}, out / "checkpoint_latest.pt")
    refused(capsys, main, ["-d", "990", "--out", out, "--resume", *PRETRAIN_SMALL], out / "checkpoint_latest.pt",
            "refused to load", unchanged=[out])


def test_classify_train_pretrained_checkpoint_with_a_payload(nnunet_env, tmp_path, capsys, marker):
    """Read before the dataset is looked up (there is none) or preprocessed."""
    from medgmae_trainers.classification.cli import main

    path = planted_checkpoint(tmp_path / "ckpt.pt", marker)
    refused(capsys, main, ["train", "NoSuchData", "--pretrained", path], path, "refused to load",
            unchanged=[nnunet_env["nnUNet_preprocessed"], nnunet_env["nnUNet_results"]])


def test_classify_predict_model_with_a_payload(nnunet_env, tmp_path, capsys, marker):
    from medgmae_trainers.classification.cli import main

    path = tmp_path / "run" / "checkpoint_final.pt"
    path.parent.mkdir()
    torch.save({"format": "medgmae-classify/1", "classes": ["a"], "payload": Payload(marker)}, path)
    refused(capsys, main, ["predict", "NoSuchData", "--model", path.parent], path, "refused to load",
            unchanged=[nnunet_env["nnUNet_preprocessed"], tmp_path / "run"])


def test_register_train_pretrained_checkpoint_with_a_payload(nnunet_env, tmp_path, capsys, marker):
    """Read before the phantom registration dataset is made."""
    from medgmae_trainers.registration.cli import main

    path = planted_checkpoint(tmp_path / "ckpt.pt", marker)
    refused(capsys, main, ["train", "--pretrained", path, "--out", tmp_path / "run", "--no-pbar"], path,
            "refused to load", unchanged=[nnunet_env["nnUNet_raw"], nnunet_env["nnUNet_results"]])
    assert not (tmp_path / "run").exists()


def test_register_predict_model_with_a_payload(nnunet_env, tmp_path, capsys, marker):
    from medgmae_trainers.registration.cli import main

    path = tmp_path / "run" / "checkpoint_final.pt"
    path.parent.mkdir()
    torch.save({"format": "medgmae-register/1", "config": {}, "payload": Payload(marker)}, path)
    refused(capsys, main, ["predict", "--model", path.parent, "--no-pbar"], path, "refused to load",
            unchanged=[nnunet_env["nnUNet_raw"], tmp_path / "run"])


def nnunet_results_folder(results: Path, marker: Path) -> Path:
    """A results folder whose fold_all/checkpoint_final.pth (nnU-Net's layout) carries a payload."""
    model = results / DATASET / "MedGMAETrainer_scratch_f100__MedGMAEPlans__3d_fullres"
    (model / "fold_all").mkdir(parents=True)
    torch.save({"network_weights": {}, "trainer_name": "MedGMAETrainer_scratch_f100",
                "init_args": {"configuration": "3d_fullres"}, "payload": Payload(marker)},
               model / "fold_all" / "checkpoint_final.pth")
    return model / "fold_all" / "checkpoint_final.pth"


def test_predict_nnunet_checkpoint_with_a_payload(nnunet_env, tmp_path, capsys, marker):
    from medgmae_trainers.finetune.predict_cli import main

    path = nnunet_results_folder(nnunet_env["nnUNet_results"], marker)
    write_ct(tmp_path / "in" / "case_0000.nii.gz", small_ct())
    refused(capsys, main, ["-i", tmp_path / "in", "-o", tmp_path / "out", "-d", "990", "-tr",
                           "MedGMAETrainer_scratch_f100", "-device", "cpu"], path, "refused to load",
            unchanged=[tmp_path, nnunet_env["nnUNet_results"]])
    assert not (tmp_path / "out").exists()


def test_train_continue_reads_nnunet_checkpoints_safely(tmp_path, marker):
    """`medgmae_train --continue` (and nnU-Net's `--c`) load checkpoint_latest.pth through the trainer's
    `load_checkpoint`: refused before nnU-Net's own `torch.load(weights_only=False)` would see it."""
    from medgmae_plans.runtime.safe_load import UnsafePickle
    from medgmae_trainers.finetune.trainers import MedGMAETrainer

    path = tmp_path / "checkpoint_latest.pth"
    torch.save({"network_weights": {}, "payload": Payload(marker)}, path)
    with pytest.raises(UnsafePickle, match="refused to load"):
        MedGMAETrainer.load_checkpoint(object.__new__(MedGMAETrainer), str(path))


# ---------------------------------------------------------------- pickles

def test_pretrain_case_properties_with_a_payload(preprocessed, tmp_path, capsys, marker):
    from medgmae_trainers.pretrain.cli import main

    from test_bad_input import PRETRAIN_SMALL

    path = preprocessed["nnUNet_preprocessed"] / DATASET / "MedGMAEPlans_3d_fullres" / "phantom_000.pkl"
    with open(path, "wb") as f:
        pickle.dump({"spacing": [1.5] * 3, "payload": Payload(marker)}, f)
    refused(capsys, main, ["-d", "990", "--out", tmp_path / "run", *PRETRAIN_SMALL], path, "refused to unpickle",
            unchanged=[tmp_path])


def test_train_case_properties_with_a_payload(preprocessed, capsys, marker):
    from medgmae_trainers.finetune.cli import main

    path = preprocessed["nnUNet_preprocessed"] / DATASET / "MedGMAEPlans_3d_fullres" / "phantom_001.pkl"
    with open(path, "wb") as f:
        pickle.dump({"spacing": [1.5] * 3, "payload": Payload(marker)}, f)
    refused(capsys, main, ["Phantom", "3d_fullres", "--device", "cpu", "--init", "scratch", "--fold", "all"], path,
            "refused to unpickle", unchanged=[preprocessed["nnUNet_results"]])


def test_reconstruct_b2nd_properties_with_a_payload(preprocessed, tmp_path, capsys, marker):
    from medgmae_trainers.reconstruction.cli import main

    data = preprocessed["nnUNet_preprocessed"] / DATASET / "MedGMAEPlans_3d_fullres"
    with open(data / "phantom_000.pkl", "wb") as f:
        pickle.dump({"spacing_after_resampling": [1.5] * 3, "payload": Payload(marker)}, f)
    refused(capsys, main, [data / "phantom_000.b2nd", "--out", tmp_path / "out", "--iterations", "2", "--no-pbar"],
            data / "phantom_000.pkl", "refused to unpickle", unchanged=[tmp_path])


def test_register_convert_ixi_with_a_payload(nnunet_env, tmp_path, capsys, marker):
    from medgmae_trainers.registration.cli import main

    source = tmp_path / "IXI_data"
    (source / "Train").mkdir(parents=True)
    (source / "Val").mkdir()
    pair = (np.zeros((8, 8, 8), np.float32), np.zeros((8, 8, 8), np.int16))
    for name in ("Train/subject_1.pkl", "Val/subject_2.pkl"):
        with open(source / name, "wb") as f:
            pickle.dump(pair, f)
    with open(source / "atlas.pkl", "wb") as f:
        pickle.dump((Payload(marker), pair[1]), f)
    refused(capsys, main, ["convert", "ixi", source, "--out", tmp_path / "out"], source / "atlas.pkl",
            "refused to unpickle", unchanged=[tmp_path / "out", nnunet_env["nnUNet_raw"]])


# ---------------------------------------------------------------- what is still read

def test_own_checkpoints_hold_plain_rng_states_and_older_ones_still_load(tmp_path):
    """RNG states are saved as tensors and numbers (they load with weights_only=True and resume exactly);
    a checkpoint written before, with numpy's RNG state as a numpy array, is still read, safely."""
    import random

    from medgmae_trainers import run

    state = run.capture_rng()
    torch.save({"format": "medgmae-test/1", "rng": state}, tmp_path / "new.pt")
    torch.load(tmp_path / "new.pt", weights_only=True)  # plain: no allow-list needed
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    run.restore_rng(run.load_checkpoint(tmp_path / "new.pt", "medgmae-test/1", "test checkpoint")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first

    old = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({"format": "medgmae-test/1", "rng": old, "loss": np.float64(0.5)}, tmp_path / "old.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    run.restore_rng(run.load_checkpoint(tmp_path / "old.pt", "medgmae-test/1", "test checkpoint")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


# ---------------------------------------------------------------- images that cannot be CT in HU

def plan(capsys, env, *fragments):
    from preprocessing.plan_and_preprocess import main

    return refused(capsys, main, ["-d", "990", "-np", "1", "--no-pbar"], *fragments,
                   unchanged=[env["nnUNet_preprocessed"]])


def uint8_ct(shape=(24, 24, 24)) -> np.ndarray:
    """A CT squeezed into 0..255, as an 8-bit export stores it."""
    return np.clip((small_ct(shape).astype(np.float32) + 1000) / 8, 0, 255).astype(np.uint8)


def test_plan_8bit_image(raw, nnunet_env, capsys):
    path = rewrite(raw / CASE_IMAGE, lambda v: np.clip((v.astype(np.float32) + 1000) / 8, 0, 255).astype(np.uint8))
    plan(capsys, nnunet_env, path, "pixel type", "cannot hold CT in HU")


def test_plan_header_spacing_contradicts_the_sform(raw, nnunet_env, capsys):
    spacing = sitk.ReadImage(str(raw / CASE_IMAGE)).GetSpacing()
    path = set_nifti_spacing(raw / CASE_IMAGE, 0, spacing[0] / 2.5)  # pixdim 1 mm where the sform says 2.5
    plan(capsys, nnunet_env, path, "contradicts itself", "pixdim")


def test_plan_label_header_contradicts_the_sform(raw, nnunet_env, capsys):
    spacing = sitk.ReadImage(str(raw / CASE_LABEL)).GetSpacing()
    path = set_nifti_spacing(raw / CASE_LABEL, 2, spacing[2] * 2)
    plan(capsys, nnunet_env, path, "contradicts itself")


def collection(capsys, env, images, *fragments):
    from preprocessing.plan_and_preprocess import main

    return refused(capsys, main, ["--images", images, "--name", "Bad", "-np", "1", "--no-pbar"], *fragments,
                   unchanged=[env["nnUNet_preprocessed"]])


def test_collection_8bit_image(nnunet_env, tmp_path, capsys):
    path = write_ct(tmp_path / "images" / "ct.nii.gz", uint8_ct())
    collection(capsys, nnunet_env, tmp_path / "images", path, "8-bit unsigned integer", "cannot hold CT in HU")


def test_collection_sheared_direction(nnunet_env, tmp_path, capsys):
    path = tmp_path / "images" / "ct.mha"
    path.parent.mkdir()
    image = sitk.GetImageFromArray(small_ct())
    image.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))  # MHA keeps a sheared matrix as written
    sitk.WriteImage(image, str(path))
    collection(capsys, nnunet_env, tmp_path / "images", path, "not orthonormal")


def reconstruct(capsys, volume, tmp_path, *fragments):
    from medgmae_trainers.reconstruction.cli import main

    refused(capsys, main, [volume, "--out", tmp_path / "out", "--iterations", "2", "--no-pbar"], *fragments,
            unchanged=[tmp_path])
    assert not (tmp_path / "out").exists()


def test_reconstruct_8bit_volume(tmp_path, capsys):
    path = write_ct(tmp_path / "ct.nii.gz", uint8_ct())
    reconstruct(capsys, path, tmp_path, path, "cannot hold CT in HU")


def test_reconstruct_header_spacing_contradicts_the_sform(tmp_path, capsys):
    path = set_nifti_spacing(write_ct(tmp_path / "ct.nii.gz", small_ct(), spacing=(2.5, 2.5, 2.5)), 0, 1.0)
    reconstruct(capsys, path, tmp_path, path, "contradicts itself", "2.5")


def test_reconstruct_sheared_direction(tmp_path, capsys):
    path = tmp_path / "ct.nrrd"
    image = sitk.GetImageFromArray(small_ct())
    image.SetDirection((1, 0, 0, 0.2, 1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(path))
    reconstruct(capsys, path, tmp_path, path, "not orthonormal")


def test_classification_reader_refuses_an_8bit_volume(tmp_path):
    from medgmae_plans.runtime import UserError
    from medgmae_trainers.classification.data import Geometry, Source, preprocess_image

    path = write_ct(tmp_path / "ct.nii.gz", uint8_ct())
    with pytest.raises(UserError, match="cannot hold CT in HU"):
        preprocess_image(Source(str(path)), Geometry())


def test_evaluate_prediction_header_contradicts_the_sform(tmp_path, capsys):
    from evaluate_support import reference_case, write_dataset_json, write_label_map

    from evaluation.cli import main

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i in range(2):
        write_label_map(gt / f"case_{i}.nii.gz", reference_case(i))
        write_label_map(pred / f"case_{i}.nii.gz", reference_case(i))
    write_dataset_json(gt / "dataset.json")
    spacing = sitk.ReadImage(str(pred / "case_0.nii.gz")).GetSpacing()
    path = set_nifti_spacing(pred / "case_0.nii.gz", 1, spacing[1] * 3)
    refused(capsys, main, ["--ref", gt, "--pred", pred, "--no-pbar"], path, "contradicts itself",
            unchanged=[tmp_path])


# ---------------------------------------------------------------- medgmae_predict's input folder

@pytest.fixture
def model(nnunet_env):
    """A results folder that exists (its checkpoint is never reached: the inputs are refused first)."""
    folder = nnunet_env["nnUNet_results"] / DATASET / "MedGMAETrainer_scratch_f100__MedGMAEPlans__3d_fullres"
    (folder / "fold_all").mkdir(parents=True)
    (folder / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    (folder / "dataset.json").write_text('{"file_ending": ".nii.gz"}')
    return folder


def predict(capsys, env, images, out, *fragments):
    from medgmae_trainers.finetune.predict_cli import main

    refused(capsys, main, ["-i", images, "-o", out, "-d", "990", "-tr", "MedGMAETrainer_scratch_f100", "-device",
                           "cpu"], *fragments, unchanged=[out.parent, env["nnUNet_results"]])
    assert not out.exists()


def test_predict_8bit_input(model, nnunet_env, tmp_path, capsys):
    path = write_ct(tmp_path / "in" / "case_0000.nii.gz", uint8_ct())
    predict(capsys, nnunet_env, tmp_path / "in", tmp_path / "out" / "pred", path, "cannot hold CT in HU")


def test_predict_nan_input(model, nnunet_env, tmp_path, capsys):
    voxels = small_ct(dtype=np.float32)
    voxels[2, 2, 2] = np.nan  # nnU-Net reads it through SimpleITK: 0 HU
    path = write_ct(tmp_path / "in" / "case_0000.nii.gz", voxels)
    predict(capsys, nnunet_env, tmp_path / "in", tmp_path / "out" / "pred", path, "1 voxels are NaN")


def test_predict_header_spacing_contradicts_the_sform(model, nnunet_env, tmp_path, capsys):
    path = set_nifti_spacing(write_ct(tmp_path / "in" / "case_0000.nii.gz", small_ct(), spacing=(2.5,) * 3), 0, 1.0)
    predict(capsys, nnunet_env, tmp_path / "in", tmp_path / "out" / "pred", path, "contradicts itself")


@pytest.mark.parametrize("shape, word", [((24, 24), "2D"), ((2, 12, 12, 12), "4D")])
def test_predict_input_not_3d(model, nnunet_env, tmp_path, capsys, shape, word):
    path = tmp_path / "in" / "case_0000.nii.gz"
    path.parent.mkdir()
    voxels = small_ct((24, 24, 24))
    if len(shape) == 2:
        image = sitk.GetImageFromArray(voxels[0])
    else:
        volume = sitk.GetImageFromArray(voxels[:12, :12, :12])
        image = sitk.JoinSeries([volume, volume])
    sitk.WriteImage(image, str(path))
    predict(capsys, nnunet_env, tmp_path / "in", tmp_path / "out" / "pred", path, word)


@pytest.mark.parametrize("name, fragment", [("case.nii.gz", "CASE_0000.nii.gz"), ("case_0000.mha", "not a .nii.gz"),
                                            ("notes.txt", "not a .nii.gz")])
def test_predict_input_names(model, nnunet_env, tmp_path, capsys, name, fragment):
    """A name without _0000 (this command's own earlier outputs are named so) is a traceback in nnU-Net;
    another ending is skipped by nnU-Net without a word."""
    write_ct(tmp_path / "in" / "good_0000.nii.gz", small_ct())
    path = tmp_path / "in" / name
    if name.endswith(".txt"):
        path.write_text("hello")
    else:
        write_ct(path, small_ct(), compress=name.endswith(".gz"))
    predict(capsys, nnunet_env, tmp_path / "in", tmp_path / "out" / "pred", path, fragment)


def test_predict_empty_input_folder(model, nnunet_env, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    predict(capsys, nnunet_env, tmp_path / "in", tmp_path / "out" / "pred", "no images to predict")


# ---------------------------------------------------------------- a run that diverges fails

def diverging_finetune(capsys, env, argv):
    """medgmae_train that diverges: exit 2, the last stderr line names the iteration and the lr, no final
    checkpoint, the run's record says failed."""
    from medgmae_trainers.finetune.cli import main
    from medgmae_trainers.finetune.run_record import read_record

    capsys.readouterr()
    code = main([str(a) for a in ["Phantom", "3d_fullres", "--device", "cpu", "--fold", "all", "--epochs", "1",
                                  "--iters-per-epoch", "2", "--threads", "1", "--no-pbar", *argv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in "\n".join(err)
    assert "non-finite" in err[-1] and "lr" in err[-1] and "iteration" in err[-1], err[-1]
    folds = list(env["nnUNet_results"].rglob("fold_all"))
    assert len(folds) == 1 and not (folds[0] / "checkpoint_final.pth").exists()
    assert read_record(folds[0]).status == "failed"
    return err[-1]


def test_finetune_checkpoint_with_a_nan_weight_diverges(preprocessed, tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "ckpt.pt")
    key = next(k for k in ckpt["encoder"] if k.endswith("weight") and "norm" not in k)
    ckpt["encoder"][key][0] = float("nan")
    ckpt["model"]["encoder." + key] = ckpt["encoder"][key]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    line = diverging_finetune(capsys, preprocessed, ["--pretrained", tmp_path / "ckpt.pt"])
    assert "non-finite loss at iteration 1 " in line


@pytest.mark.parametrize("command, argv, flag", [
    ("medgmae_train", ["Phantom", "3d_fullres", "--init", "scratch", "--fold", "all", "--lr", "inf"], "--lr inf"),
    ("medgmae_pretrain", ["-d", "990", "--lr", "inf"], "--lr inf"),
    ("medgmae_evaluate", ["--ref", "gt", "--pred", "pred", "--tolerance", "inf"], "--tolerance inf"),
    ("medgmae_evaluate", ["--ref", "gt", "--pred", "pred", "--tolerance", "nan"], "--tolerance nan"),
    ("medgmae_reconstruct", ["ct.nii.gz", "--cutoff", "inf"], "--cutoff inf"),
    ("medgmae_make_phantom", ["-n", "1", "--spacing-scale", "nan"], "--spacing-scale nan"),
    ("medgmae_make_phantom", ["-n", "1", "--spacing-scale", "inf"], "--spacing-scale inf")])
def test_infinite_or_nan_numbers_are_refused(nnunet_env, tmp_path, capsys, command, argv, flag):
    """Every numeric flag through the one range check, which takes no NaN and no infinity."""
    import importlib

    from test_bad_input import COMMAND_PARSERS

    monkey_cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        (tmp_path / "gt").mkdir()
        (tmp_path / "pred").mkdir()
        write_ct(tmp_path / "ct.nii.gz", small_ct())
        main = importlib.import_module(COMMAND_PARSERS[command]).main
        refused(capsys, main, argv, flag, unchanged=[tmp_path, *nnunet_env.values()])
    finally:
        os.chdir(monkey_cwd)


# ---------------------------------------------------------------- one writer per run folder

def test_pretrain_second_writer_of_the_same_out(preprocessed, tmp_path, capsys):
    from medgmae_plans.runtime.locks import lock_folder
    from medgmae_trainers.pretrain.cli import main

    from test_bad_input import PRETRAIN_SMALL

    out = tmp_path / "run"
    with lock_folder(out):  # the first run, still training
        refused(capsys, main, ["-d", "990", "--out", out, *PRETRAIN_SMALL], out, f"pid {os.getpid()}",
                unchanged=[out])


@pytest.mark.parametrize("resume", [False, True])
def test_train_second_writer_of_the_same_fold(preprocessed, capsys, resume):
    """A second start, or --continue while the first run still trains, is refused in one line."""
    from medgmae_plans.runtime.locks import lock_folder
    from medgmae_trainers.finetune.cli import main

    fold = (preprocessed["nnUNet_results"] / DATASET / "MedGMAETrainer_scratch_f100__MedGMAEPlans__3d_fullres"
            / "fold_all")
    with lock_folder(fold):
        refused(capsys, main, ["Phantom", "3d_fullres", "--device", "cpu", "--init", "scratch", "--fold", "all",
                               *(["--continue"] if resume else [])], fold, f"pid {os.getpid()}",
                unchanged=[preprocessed["nnUNet_results"]])


def test_reconstruct_second_writer_of_the_same_out(tmp_path, capsys):
    from medgmae_plans.runtime.locks import lock_folder
    from medgmae_trainers.reconstruction.cli import main

    volume = write_ct(tmp_path / "ct.nii.gz", small_ct())
    with lock_folder(tmp_path / "out"):
        refused(capsys, main, [volume, "--out", tmp_path / "out", "--iterations", "2", "--no-pbar"], tmp_path / "out",
                f"pid {os.getpid()}", unchanged=[tmp_path])


def test_evaluate_second_writer_of_the_same_output_folder(tmp_path, capsys):
    from evaluate_support import reference_case, write_dataset_json, write_label_map

    from evaluation.cli import main
    from medgmae_plans.runtime.locks import lock_folder

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i in range(2):
        write_label_map(gt / f"case_{i}.nii.gz", reference_case(i))
        write_label_map(pred / f"case_{i}.nii.gz", reference_case(i))
    write_dataset_json(gt / "dataset.json")
    with lock_folder(pred):
        refused(capsys, main, ["--ref", gt, "--pred", pred, "--no-pbar"], pred, f"pid {os.getpid()}",
                unchanged=[tmp_path])


def test_predict_second_writer_of_the_same_output_folder(model, nnunet_env, tmp_path, capsys):
    from medgmae_plans.runtime.locks import lock_folder
    from medgmae_trainers.finetune.predict_cli import main

    write_ct(tmp_path / "in" / "case_0000.nii.gz", small_ct())
    with lock_folder(tmp_path / "out"):
        refused(capsys, main, ["-i", tmp_path / "in", "-o", tmp_path / "out", "-d", "990", "-tr",
                               "MedGMAETrainer_scratch_f100", "-device", "cpu"], tmp_path / "out",
                f"pid {os.getpid()}", unchanged=[tmp_path])


def test_a_lock_writes_nothing_and_leaves_no_folder(tmp_path):
    from medgmae_plans.runtime.locks import hold_folder, holder_pid, lock_folder, release_held

    with lock_folder(tmp_path / "new") as folder:
        assert folder.is_dir() and list(folder.iterdir()) == [] and holder_pid(folder) == os.getpid()
    assert not (tmp_path / "new").exists()  # made by the lock, still empty: removed
    hold_folder(tmp_path / "kept")
    (tmp_path / "kept" / "result.txt").write_text("x")
    release_held()
    assert (tmp_path / "kept" / "result.txt").exists() and holder_pid(tmp_path / "kept") is None


# ---------------------------------------------------------------- arguments and inputs checked before work

def test_reconstruct_label_map_b2nd(preprocessed, tmp_path, capsys):
    from medgmae_trainers.reconstruction.cli import main

    path = preprocessed["nnUNet_preprocessed"] / DATASET / "MedGMAEPlans_3d_fullres" / "phantom_000_seg.b2nd"
    refused(capsys, main, [path, "--out", tmp_path / "out", "--iterations", "2", "--no-pbar"], path, "label map",
            unchanged=[tmp_path])


def test_reconstruct_b2nd_without_its_pkl(preprocessed, tmp_path, capsys):
    """Its spacing is its plan's, written in the .pkl only (it was read at 1.5 mm whatever its plan)."""
    from medgmae_trainers.reconstruction.cli import main

    data = preprocessed["nnUNet_preprocessed"] / DATASET / "MedGMAEPlans_3d_fullres"
    (data / "phantom_000.pkl").unlink()
    refused(capsys, main, [data / "phantom_000.b2nd", "--out", tmp_path / "out", "--iterations", "2", "--no-pbar"],
            data / "phantom_000.b2nd", "phantom_000.pkl", unchanged=[tmp_path])


def test_reconstruct_downsample_beyond_the_volume(tmp_path, capsys):
    from medgmae_trainers.reconstruction.cli import main

    path = write_ct(tmp_path / "ct.nii.gz", small_ct())
    refused(capsys, main, [path, "--out", tmp_path / "out", "--iterations", "2", "--no-pbar", "--downsample", "100"],
            "--downsample 100", unchanged=[tmp_path])
    assert not (tmp_path / "out").exists()


def test_pretrain_crop_of_one_patch_masks_nothing(nnunet_env, tmp_path, capsys):
    from medgmae_trainers.pretrain.cli import main

    refused(capsys, main, ["-d", "990", "--out", tmp_path / "run", "--crop-size", "16", "--patch", "16"],
            "--crop-size 16", "none masked", unchanged=[tmp_path])


def test_train_fraction_finer_than_a_trainer_name(preprocessed, capsys):
    from medgmae_trainers.finetune.cli import main

    line = refused(capsys, main, ["Phantom", "3d_fullres", "--device", "cpu", "--init", "scratch", "--fold", "all",
                                  "--fraction", "1e-9"], "--fraction 1e-9", unchanged=[preprocessed["nnUNet_results"]])
    assert "--trainer" not in line


def test_train_without_num_training_and_fewer_than_five_cases(preprocessed, capsys):
    from medgmae_trainers.finetune.cli import main

    meta = preprocessed["nnUNet_preprocessed"] / DATASET / "dataset.json"
    data = json.loads(meta.read_text())
    del data["numTraining"]
    meta.write_text(json.dumps(data))
    refused(capsys, main, ["Phantom", "3d_fullres", "--device", "cpu", "--init", "scratch", "--fold", "0"],
            "2 training case(s)", "--fold all", unchanged=[preprocessed["nnUNet_results"]])


def test_classify_size_not_a_multiple_of_the_patch(nnunet_env, capsys):
    """Refused before the dataset is looked up or preprocessed."""
    from medgmae_trainers.classification.cli import main

    refused(capsys, main, ["train", "NoSuchData", "--init", "scratch", "--size-xyz", "30", "30", "30"], "--size-xyz",
            "patch 16", unchanged=[nnunet_env["nnUNet_preprocessed"], nnunet_env["nnUNet_results"]])


def test_evaluate_4d_prediction(tmp_path, capsys):
    from evaluate_support import reference_case, write_dataset_json, write_label_map

    from evaluation.cli import main

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i in range(2):
        write_label_map(gt / f"case_{i}.nii.gz", reference_case(i))
        write_label_map(pred / f"case_{i}.nii.gz", reference_case(i))
    write_dataset_json(gt / "dataset.json")
    volume = sitk.ReadImage(str(pred / "case_0.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(pred / "case_0.nii.gz"))
    refused(capsys, main, ["--ref", gt, "--pred", pred, "--no-pbar"], pred / "case_0.nii.gz", "4D",
            unchanged=[tmp_path])


@pytest.mark.parametrize("preview", ["folder", "montage.txt"])
def test_phantom_preview_not_a_png(nnunet_env, tmp_path, capsys, preview):
    from preprocessing.phantom.cli import main

    target = tmp_path / preview
    if preview == "folder":
        target.mkdir()
    refused(capsys, main, ["-n", "1", "--no-pbar", "--preview", target], "--preview",
            unchanged=[nnunet_env["nnUNet_raw"], tmp_path])


# ---------------------------------------------------------------- nothing left behind

def test_reconstruct_all_air_volume_leaves_no_output_folder(tmp_path, capsys):
    """Refused after its log was opened: the folder the command made holds only that log, and goes."""
    from medgmae_trainers.reconstruction.cli import main

    path = write_ct(tmp_path / "ct.nii.gz", np.full((24, 24, 24), -1000, np.int16))
    refused(capsys, main, [path, "--out", tmp_path / "out", "--iterations", "2", "--no-pbar"], unchanged=[tmp_path])
    assert not (tmp_path / "out").exists()


def test_phantom_work_folder_of_a_killed_run_is_removed(nnunet_env, capsys):
    """A SIGKILLed generation leaves its `.Dataset…tmp` work folder; the next generation removes it, but
    not the work folder of a generation still running (it holds a lock on it)."""
    from medgmae_plans.runtime.locks import lock_folder
    from preprocessing.phantom.cli import main

    raw = nnunet_env["nnUNet_raw"]
    killed = raw / f".{DATASET}.killed01.tmp"
    (killed / "imagesTr").mkdir(parents=True)
    (killed / "imagesTr" / "half.nii.gz").write_bytes(b"\x1f\x8b")
    running = raw / f".{DATASET}.running.tmp"
    running.mkdir()
    with lock_folder(running):
        assert main(["-n", "1", "--spacing-scale", "4", "-np", "1", "--no-pbar"]) == 0
    assert not killed.exists() and running.exists()
    assert (raw / DATASET / "dataset.json").is_file()


def test_plan_label_without_its_image(raw, nnunet_env, capsys):
    shutil.copy(raw / CASE_LABEL, raw / "labelsTr" / "phantom_007.nii.gz")
    plan(capsys, nnunet_env, raw / "labelsTr" / "phantom_007.nii.gz", "a label without its image")


def test_a_refused_command_leaves_no_folder_holding_only_its_log(tmp_path):
    from medgmae_plans.runtime.locks import hold_folder, release_held

    hold_folder(tmp_path / "out")
    (tmp_path / "out" / "medgmae_reconstruct.log").write_text("started\n")
    release_held(failed=True)
    assert not (tmp_path / "out").exists()
    hold_folder(tmp_path / "run")
    (tmp_path / "run" / "medgmae_train.log").write_text("started\n")
    (tmp_path / "run" / "medgmae_finetune.json").write_text("{}")
    release_held(failed=True)
    assert (tmp_path / "run" / "medgmae_finetune.json").exists()  # a failed run's record is kept


def test_reconstruct_logs_a_finite_loss_from_iteration_0(tmp_path, capsys):
    """Iteration 0 was logged as "loss nan" on every run: the placeholder of a loss not computed yet.
    It is now the initial Gaussians' projection loss."""
    from medgmae_trainers.reconstruction.cli import main

    path = write_ct(tmp_path / "ct.nii.gz", small_ct())
    assert main([str(path), "--out", str(tmp_path / "out"), "--iterations", "2", "--eval-every", "1", "--views", "8",
                 "--no-pbar"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "iter " in line and "loss" in line]
    assert lines and "iter      0" in lines[0] and "nan" not in " ".join(lines).lower(), err


def test_disk_full_without_a_file_name_names_the_output_folder(tmp_path, capsys, monkeypatch):
    """An ENOSPC raised with no file name (a library writing through a file object) said "writing ?"."""
    import medgmae_trainers.reconstruction.cli as cli
    from bad_input_support import enospc

    path = write_ct(tmp_path / "ct.nii.gz", small_ct())
    monkeypatch.setattr(cli, "setup_run_log", enospc)
    line = refused(capsys, cli.main, [path, "--out", tmp_path / "out", "--iterations", "2", "--no-pbar"],
                   "no space left on device writing in", tmp_path / "out")
    assert "?" not in line


def test_predict_cut_prediction_is_not_accepted(tmp_path, monkeypatch):
    """nnU-Net's export on a full disk leaves a 0-byte prediction and exits as if done: every written
    prediction is read back whole, and a full device is named as the cause."""
    from collections import namedtuple

    from medgmae_plans.runtime import atomic
    from medgmae_plans.runtime import UserError, os_error_line
    from medgmae_trainers.finetune.predict_cli import check_written

    write_ct(tmp_path / "out" / "case_a.nii.gz", small_ct())
    (tmp_path / "out" / "case_b.nii.gz").write_bytes(b"")
    with pytest.raises(UserError, match="case_b.nii.gz: written incompletely"):
        check_written(tmp_path / "out")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
    with pytest.raises(OSError) as stop:
        check_written(tmp_path / "out")
    assert os_error_line(stop.value).startswith(f"no space left on device writing {tmp_path / 'out' / 'case_b.nii.gz'}")


def test_evaluate_refused_after_its_log_leaves_no_output_folder(nnunet_env, tmp_path, capsys):
    """No finished run to score: refused after the log was opened in the new -o folder, which goes again."""
    from evaluate_support import make_run, reference_case

    from evaluation.cli import main

    make_run(nnunet_env["nnUNet_results"], "scratch", 0.1, 0, {"phantom_000": reference_case(0)}, finished=False)
    code = main([DATASET, "-o", str(tmp_path / "eval"), "--no-pbar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no run has validation predictions" in err[-1], err
    assert not (tmp_path / "eval").exists()


def test_train_patch_size_that_cannot_fit_in_memory(preprocessed, capsys):
    """--patch-size 1000 was allowed by --help and killed for memory after 82 s: refused by a lower bound
    of what its batch needs, naming the limit; the plans' patch and the usual ones pass."""
    from medgmae_trainers.finetune.cli import main

    refused(capsys, main, ["Phantom", "3d_fullres", "--device", "cpu", "--init", "scratch", "--fold", "all",
                           "--patch-size", "992"], "--patch-size 992", "GiB", "limit is below",
            unchanged=[preprocessed["nnUNet_results"]])
