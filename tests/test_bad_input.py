"""The bad-input catalogue (issue 18): one fault in one command per test ("a kind").

Each refusal is checked by `bad_input_support.refused`: exit code 2, exactly one line on stderr
naming the file or argument, no traceback, and the output folders unchanged. Commands run in-process
through their `main(argv)`; `test_console_scripts` runs a few through the installed entry points.
Where a run got under way before the fault (a full disk at a checkpoint, a kill mid-write) the test
checks what is kept instead. docs/input_checks.md lists what is checked where. The second part of
the catalogue (issue 27: safe loading, images that cannot be CT in HU, diverged runs, one writer per
folder) is tests/test_bad_input_untrusted.py.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input_support import (CASE_IMAGE, CASE_LABEL, DATASET, console_script, enospc, refused, rewrite,
                               set_nifti_spacing, small_ct, truncate, write_ct, write_dicom_series, zero_bytes)
from evaluate_support import reference_case, write_dataset_json, write_label_map
from finetune_support import fake_checkpoint


# ---------------------------------------------------------------- shared data (built once a session)

@pytest.fixture
def not_writable(monkeypatch):
    """Make `runtime.check_writable` see the given folder as not writable (tests run as root, for whom
    every folder is writable, so a chmod would prove nothing)."""
    from medgmae_plans.runtime import command as runtime

    def make(folder):
        real = os.access
        monkeypatch.setattr(runtime.os, "access",
                            lambda path, mode: False if os.fspath(path) == os.fspath(folder) else real(path, mode))
        return folder
    return make


# ---------------------------------------------------------------- medgmae_plan_and_preprocess

def plan(capsys, env, *fragments, args=()):
    from preprocessing.plan_and_preprocess import main

    return refused(capsys, main, ["-d", "990", "-np", "1", "--no-pbar", *args], *fragments,
                   unchanged=[env["nnUNet_preprocessed"]])


@pytest.mark.parametrize("what", ["image", "label"])
def test_plan_truncated_nii_gz(raw, nnunet_env, capsys, what):
    path = truncate(raw / (CASE_IMAGE if what == "image" else CASE_LABEL))
    plan(capsys, nnunet_env, path, "corrupt or truncated gzip stream")


def test_plan_zero_byte_image(raw, nnunet_env, capsys):
    path = zero_bytes(raw / CASE_IMAGE)
    plan(capsys, nnunet_env, path, "empty file")


def test_plan_gzip_crc_mismatch(raw, nnunet_env, capsys):
    path = raw / CASE_IMAGE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the stream: only the CRC tells
    path.write_bytes(bytes(data))
    plan(capsys, nnunet_env, path, "corrupt or truncated gzip stream")


def test_plan_truncated_uncompressed_nii(raw, nnunet_env, capsys):
    for path in list((raw / "imagesTr").glob("*.nii.gz")) + list((raw / "labelsTr").glob("*.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path)[:-3])
        path.unlink()
    meta = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nii"}))
    path = truncate(raw / CASE_IMAGE[:-3], keep=0.9)
    plan(capsys, nnunet_env, path, "truncated", "NIfTI data")


@pytest.mark.parametrize("spacing, word", [(0.0, "0.0"), (-1.5, "-1.5")])
def test_plan_zero_or_negative_spacing_in_header(raw, nnunet_env, capsys, spacing, word):
    path = set_nifti_spacing(raw / CASE_IMAGE, 0, spacing)
    plan(capsys, nnunet_env, path, "header spacing", word)


def test_plan_malformed_dataset_json(raw, nnunet_env, capsys):
    (raw / "dataset.json").write_text('{"channel_names": {"0": "CT"},')
    plan(capsys, nnunet_env, raw / "dataset.json", "not valid JSON")


def test_plan_non_integer_label(raw, nnunet_env, capsys):
    # label 8 (the aorta) lies in every central crop of every phantom case; the spleen need not
    path = rewrite(raw / CASE_LABEL, lambda v: np.where(v == 8, 8.5, v).astype(np.float32))
    plan(capsys, nnunet_env, path, "non-integer")


def test_plan_infinite_voxels(raw, nnunet_env, capsys):
    def with_inf(v):
        v = v.astype(np.float32)
        v[0, 0, :3] = np.inf
        return v
    path = rewrite(raw / CASE_IMAGE, with_inf)
    plan(capsys, nnunet_env, path, "3 voxels are NaN or infinite")


def test_plan_4d_image(raw, nnunet_env, capsys):
    path = raw / CASE_IMAGE
    volume = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(path), useCompression=True)
    plan(capsys, nnunet_env, path, "4D image")


def test_plan_multi_channel_image(raw, nnunet_env, capsys):
    path = raw / CASE_IMAGE
    volume = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.Compose(volume, volume), str(path), useCompression=True)
    plan(capsys, nnunet_env, path, "2 components per voxel")


def test_plan_unknown_dataset(raw, nnunet_env, capsys):
    from preprocessing.plan_and_preprocess import main

    refused(capsys, main, ["-d", "NoSuchData", "--no-pbar"], "no dataset matches 'NoSuchData'",
            unchanged=[nnunet_env["nnUNet_preprocessed"]])


def test_plan_ambiguous_dataset_name(raw, nnunet_env, capsys):
    from preprocessing.plan_and_preprocess import main

    shutil.copytree(raw, nnunet_env["nnUNet_raw"] / "Dataset991_AbdomenPhantom")
    refused(capsys, main, ["-d", "AbdomenPhantom", "--no-pbar"], "'AbdomenPhantom' is ambiguous",
            unchanged=[nnunet_env["nnUNet_preprocessed"]])


def test_plan_processes_out_of_range(raw, nnunet_env, capsys):
    plan(capsys, nnunet_env, "-np must be at least 1", args=["-np", "0"])


def test_plan_second_run_on_the_same_dataset(raw, nnunet_env, capsys):
    from preprocessing.plan_and_preprocess import _lock

    with _lock(raw, DATASET):  # the first run holds it (flock: another open file conflicts, even in-process)
        plan(capsys, nnunet_env, raw, "another medgmae_plan_and_preprocess run for", DATASET)
    assert os.listdir(raw.parent) == [DATASET]  # taking the lock wrote nothing


def test_plan_unwritable_output(raw, nnunet_env, capsys, not_writable):
    folder = not_writable(nnunet_env["nnUNet_preprocessed"])
    plan(capsys, nnunet_env, folder / DATASET, "not writable")


# ---------------------------------------------------------------- collections (--images): other formats

def collection(capsys, env, images, *fragments):
    from preprocessing.plan_and_preprocess import main

    return refused(capsys, main, ["--images", images, "--name", "Bad", "-np", "1", "--no-pbar"], *fragments,
                   unchanged=[env["nnUNet_preprocessed"]])


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_collection_truncated_mha_nrrd(nnunet_env, tmp_path, capsys, ending):
    path = truncate(write_ct(tmp_path / "images" / f"ct{ending}", small_ct()))
    collection(capsys, nnunet_env, tmp_path / "images", path, "cannot be read")


def test_collection_truncated_dicom_slice(nnunet_env, tmp_path, capsys):
    files = write_dicom_series(tmp_path / "images" / "patient", small_ct((12, 24, 24)))
    truncate(files[5], keep=0.6)  # GDCM would leave it out of the series and interpolate the gap
    collection(capsys, nnunet_env, tmp_path / "images", files[5], "DICOM slice cannot be read")


def test_collection_nan_voxels(nnunet_env, tmp_path, capsys):
    voxels = small_ct(dtype=np.float32)
    voxels[3, 3, 3] = np.nan  # SimpleITK reads it as 0; nibabel's second look counts it
    path = write_ct(tmp_path / "images" / "ct.nii.gz", voxels)
    collection(capsys, nnunet_env, tmp_path / "images", path, "1 voxels are NaN or infinite")


# ---------------------------------------------------------------- medgmae_convert

def convert(capsys, env, source, *fragments, args=()):
    from preprocessing.convert.cli import main

    return refused(capsys, main, ["flare22", source, "-np", "1", "--no-pbar", *args], *fragments,
                   unchanged=[env["nnUNet_raw"]])


@pytest.fixture
def flare22(phantom_source, tmp_path):
    """FLARE22's published layout (images/, labels/) from the phantom's two cases."""
    source = tmp_path / "FLARE22"
    (source / "images").mkdir(parents=True)
    (source / "labels").mkdir()
    for i in range(2):
        shutil.copy(phantom_source / f"imagesTr/phantom_00{i}_0000.nii.gz", source / f"images/FLARE22_Tr_000{i + 1}_0000.nii.gz")
        shutil.copy(phantom_source / f"labelsTr/phantom_00{i}.nii.gz", source / f"labels/FLARE22_Tr_000{i + 1}.nii.gz")
    return source


def test_convert_truncated_image_is_not_copied(flare22, nnunet_env, capsys):
    path = truncate(flare22 / "images/FLARE22_Tr_0001_0000.nii.gz")
    convert(capsys, nnunet_env, flare22, path, "corrupt or truncated gzip stream")


def test_convert_truncated_label(flare22, nnunet_env, capsys):
    path = truncate(flare22 / "labels/FLARE22_Tr_0002.nii.gz", keep=0.8)
    convert(capsys, nnunet_env, flare22, path, "corrupt or truncated gzip stream")


def test_convert_undocumented_label_value(flare22, nnunet_env, capsys):
    path = rewrite(flare22 / "labels/FLARE22_Tr_0001.nii.gz", lambda v: np.where(v == 8, 40, v).astype(v.dtype))
    convert(capsys, nnunet_env, flare22, path, "[40]", "documented label map")


def test_convert_disk_full_while_writing_a_label(flare22, nnunet_env, capsys, monkeypatch):
    """SimpleITK's NIfTI writer leaves a cut file on a full disk and returns as if it had written it
    (it prints "wrote only 0 of N bytes"): the written file is checked, and the device found full."""
    from collections import namedtuple

    from medgmae_plans.runtime import atomic

    real_write = sitk.WriteImage

    def write_half(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        truncate(path)
    monkeypatch.setattr(sitk, "WriteImage", write_half)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
    line = convert(capsys, nnunet_env, flare22, "no space left on device writing", "labelsTr")
    assert "FLARE22_Tr_0001.nii.gz" in line


def test_plan_disk_full_is_not_blamed_on_the_image(preprocessed_source, monkeypatch, tmp_path):
    """blosc2 reports a full disk as a bare RuntimeError: with the device full, preprocessing says so
    instead of "<image>: preprocessing failed"."""
    from collections import namedtuple

    from medgmae_plans.runtime import atomic
    from preprocessing import preprocess
    from medgmae_plans.runtime import os_error_line

    folder = preprocessed_source["nnUNet_preprocessed"] / DATASET
    plans = json.loads((folder / "MedGMAEPlans.json").read_text())
    raw = preprocessed_source["nnUNet_raw"] / DATASET
    job = preprocess.CaseJob("phantom_000", (str(raw / CASE_IMAGE),), str(raw / CASE_LABEL))

    def full(*args, **kwargs):
        raise RuntimeError("Error while creating the NDArray")
    monkeypatch.setattr(preprocess, "_save_case", full)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
    with pytest.raises(OSError) as stop:
        preprocess.preprocess_case(job, str(tmp_path), plans, json.loads((raw / "dataset.json").read_text()),
                                   "3d_fullres")
    assert os_error_line(stop.value).startswith(f"no space left on device writing {tmp_path / 'phantom_000'}")


def test_convert_unwritable_raw_folder(flare22, nnunet_env, capsys, not_writable):
    folder = not_writable(nnunet_env["nnUNet_raw"])
    convert(capsys, nnunet_env, flare22, folder, "not writable")


def test_convert_processes_out_of_range(flare22, nnunet_env, capsys):
    convert(capsys, nnunet_env, flare22, "-np 0", ">= 1", args=["-np", "0"])


def test_convert_unknown_dataset_kind(tmp_path, nnunet_env, capsys):
    from preprocessing.convert.cli import main

    refused(capsys, main, ["flare23", tmp_path], "flare23", unchanged=[nnunet_env["nnUNet_raw"]])


# ---------------------------------------------------------------- medgmae_pretrain

PRETRAIN_SMALL = ["--preset", "tiny", "--gaussians", "8", "--crop-size", "32", "--patch", "16", "--batch-size", "1",
                  "--workers", "0", "--sub-crops", "1", "--device", "cpu", "--no-pbar", "--threads", "1"]


@pytest.mark.parametrize("flag, value, rule", [
    ("--mask-ratio", "0", "in (0, 1)"), ("--mask-ratio", "1.0", "in (0, 1)"), ("--steps", "0", ">= 1"),
    ("--batch-size", "0", ">= 1"), ("--crop-size", "100", "multiple of the ViT patch 16"), ("--lr", "nan", "> 0"),
    ("--warmup", "-1", ">= 0")])
def test_pretrain_argument_out_of_range(nnunet_env, tmp_path, capsys, flag, value, rule):
    """Refused before the dataset is even looked up (there is none here) and before --out exists."""
    from medgmae_trainers.pretrain.cli import main

    refused(capsys, main, ["-d", "990", "--out", tmp_path / "run", flag, value], flag, rule, unchanged=[tmp_path])
    assert not (tmp_path / "run").exists()


def test_pretrain_help_states_the_ranges(capsys):
    from medgmae_trainers.pretrain.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    for rule in ("in (0, 1) exclusive", "optimiser steps, >= 1", "per process, >= 1", "multiple of the ViT patch"):
        assert rule in text


def test_pretrain_unknown_dataset(nnunet_env, tmp_path, capsys):
    from medgmae_trainers.pretrain.cli import main

    refused(capsys, main, ["-d", "NoSuchData", "--out", tmp_path / "run"], "no dataset matches 'NoSuchData'",
            unchanged=[tmp_path])


@pytest.mark.parametrize("what", ["b2nd", "seg", "pkl"])
def test_pretrain_corrupt_preprocessed_case(preprocessed, tmp_path, capsys, what):
    data = preprocessed["nnUNet_preprocessed"] / DATASET / "MedGMAEPlans_3d_fullres"
    path = {"b2nd": data / "phantom_000.b2nd", "seg": data / "phantom_001_seg.b2nd", "pkl": data / "phantom_000.pkl"}[what]
    truncate(path)
    from medgmae_trainers.pretrain.cli import main

    refused(capsys, main, ["-d", "990", "--out", tmp_path / "run", *PRETRAIN_SMALL], path, "--clean",
            unchanged=[tmp_path])


def test_pretrain_unwritable_out(nnunet_env, tmp_path, capsys, not_writable):
    from medgmae_trainers.pretrain.cli import main

    not_writable(tmp_path)
    refused(capsys, main, ["-d", "990", "--out", tmp_path / "run"], tmp_path / "run", "not writable")


def test_pretrain_resume_from_a_file_that_is_not_a_checkpoint(preprocessed, tmp_path, capsys):
    from medgmae_trainers.pretrain.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint_latest.pt").write_bytes(b"definitely not a torch file")
    refused(capsys, main, ["-d", "990", "--out", tmp_path / "run", "--resume", *PRETRAIN_SMALL],
            "checkpoint_latest.pt")


def test_pretrain_disk_full_keeps_the_last_good_checkpoint(preprocessed, tmp_path, capsys, monkeypatch):
    """A full disk at the second checkpoint save: one error line naming the file, and the first
    checkpoint still there and loadable; no temporary file left."""
    import torch

    from medgmae_plans.runtime import atomic
    from medgmae_trainers.pretrain.cli import main

    out = tmp_path / "run"
    saves, real_save = [], torch.save

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            enospc()
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    code = main([str(a) for a in ["-d", "990", "--out", out, "--steps", "2", "--save-every", "1", "--png-every", "100",
                                  *PRETRAIN_SMALL]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert [line for line in err if "error" in line] == [err[-1]]
    assert "no space left on device" in err[-1] and str(out / "checkpoint_latest.pt") in err[-1]
    assert torch.load(out / "checkpoint_latest.pt", weights_only=False)["step"] == 1
    assert not atomic.remove_leftovers(out), "the failed save left its temporary file"


def test_pretrain_killed_mid_save_leaves_nothing_after_the_rerun(preprocessed, tmp_path, capsys):
    """kill -9 during a checkpoint save (the fault hook: the temporary file a killed `atomic_path`
    leaves, written by a child process that dies before its rename); the rerun with --resume removes it
    and carries on from the last complete checkpoint."""
    import subprocess
    import sys

    import torch

    from medgmae_trainers.pretrain.cli import main

    out = tmp_path / "run"
    argv = ["-d", "990", "--out", out, "--save-every", "1", "--png-every", "100", *PRETRAIN_SMALL]
    assert main([*map(str, argv), "--steps", "1"]) == 0
    hook = ("import os, sys, torch; from medgmae_plans.runtime import atomic\n"
            "with atomic.atomic_path(sys.argv[1]) as tmp:\n"
            "    torch.save({'half': torch.zeros(1000)}, tmp); os.kill(os.getpid(), 9)\n")
    killed = subprocess.run([sys.executable, "-c", hook, str(out / "checkpoint_latest.pt")])
    assert killed.returncode == -9
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint_latest.pt.")]
    assert leftovers, "the fault hook left no temporary file"
    assert main([*map(str, argv), "--steps", "2", "--resume"]) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint_latest.pt.")]
    assert torch.load(out / "checkpoint_final.pt", weights_only=False)["step"] == 2


# ---------------------------------------------------------------- medgmae_train

def train(capsys, env, args, fragments):
    from medgmae_trainers.finetune.cli import main

    return refused(capsys, main, ["Phantom", "3d_fullres", "--device", "cpu", *args], *fragments,
                   unchanged=[env["nnUNet_results"], env["nnUNet_preprocessed"]])


def test_train_fold_outside_the_split(preprocessed, capsys):
    train(capsys, preprocessed, ["--init", "scratch", "--fold", "7"], ["--fold 7", "0..4", "'all'"])


def test_train_fewer_than_five_cases_says_fold_all(preprocessed, capsys):
    train(capsys, preprocessed, ["--init", "scratch", "--fold", "0"], ["2 training case(s)", "--fold all"])


def test_train_fold_not_a_number(preprocessed, capsys):
    train(capsys, preprocessed, ["--init", "scratch", "--fold", "-1"], ["--fold '-1'"])


def test_train_epochs_zero(preprocessed, capsys):
    train(capsys, preprocessed, ["--init", "scratch", "--fold", "all", "--epochs", "0"], ["--epochs"])


@pytest.mark.parametrize("flag, value, rule", [
    ("--lr", "0", "> 0"), ("--lr", "nan", "> 0"), ("--layer-decay", "1.5", "in (0, 1]"),
    ("--feature-size", "0", ">= 1"), ("--val-step-size", "0", "in (0, 1]"), ("--iters-per-epoch", "0", ">= 1"),
    ("--num-gpus", "0", ">= 1"), ("--threads", "-1", ">= 1")])
def test_train_argument_out_of_range(preprocessed, capsys, flag, value, rule):
    train(capsys, preprocessed, ["--init", "scratch", "--fold", "all", flag, value], [flag, rule])


def test_train_checkpoint_that_is_not_a_checkpoint(preprocessed, tmp_path, capsys):
    (tmp_path / "ckpt.pt").write_text("hello")
    train(capsys, preprocessed, ["--pretrained", tmp_path / "ckpt.pt"], [tmp_path / "ckpt.pt"])


def test_train_truncated_checkpoint(preprocessed, tmp_path, capsys):
    fake_checkpoint(tmp_path / "ckpt.pt")
    truncate(tmp_path / "ckpt.pt")
    train(capsys, preprocessed, ["--pretrained", tmp_path / "ckpt.pt"], [tmp_path / "ckpt.pt"])


def test_train_checkpoint_of_another_preset(preprocessed, tmp_path, capsys):
    fake_checkpoint(tmp_path / "ckpt.pt")  # tiny
    train(capsys, preprocessed, ["--pretrained", tmp_path / "ckpt.pt", "--preset", "base"],
          [tmp_path / "ckpt.pt", "preset"])


def test_train_checkpoint_of_another_configuration(preprocessed, tmp_path, capsys):
    import torch

    ckpt = fake_checkpoint(tmp_path / "ckpt.pt")
    ckpt["metadata"]["spacing"] = [3.0, 3.0, 3.0]  # what 3d_lowres pretraining records
    torch.save(ckpt, tmp_path / "ckpt.pt")
    train(capsys, preprocessed, ["--pretrained", tmp_path / "ckpt.pt"], [tmp_path / "ckpt.pt", "3"])


def test_train_checkpoint_of_another_patch_size(preprocessed, tmp_path, capsys):
    fake_checkpoint(tmp_path / "ckpt.pt")  # ViT patch 16
    train(capsys, preprocessed, ["--pretrained", tmp_path / "ckpt.pt", "--patch", "8"],
          [tmp_path / "ckpt.pt", "patch 16^3", "--patch 8"])


def test_train_corrupt_preprocessed_case(preprocessed, capsys):
    path = truncate(preprocessed["nnUNet_preprocessed"] / DATASET / "MedGMAEPlans_3d_fullres" / "phantom_001.b2nd")
    train(capsys, preprocessed, ["--init", "scratch", "--fold", "all"], [path])


def test_train_unwritable_results(preprocessed, capsys, not_writable):
    folder = not_writable(preprocessed["nnUNet_results"])
    train(capsys, preprocessed, ["--init", "scratch", "--fold", "all"], [folder, "not writable"])


def test_train_failed_start_does_not_block_the_rerun(preprocessed):
    """A record of a run that failed before its first checkpoint (nnU-Net stopped at its start) is
    replaced by a new start; one with a checkpoint is a run to --continue."""
    from medgmae_plans.runtime import UserError
    from medgmae_trainers.finetune.cli import check_existing
    from medgmae_trainers.finetune.run_record import Settings, write_record

    folder = preprocessed["nnUNet_results"] / "fold_all"
    settings = Settings(dataset=DATASET, trainer="MedGMAETrainer_scratch_f100", init="scratch", fraction=1.0,
                        fold="all", status="failed")
    write_record(folder, settings)
    check_existing(settings, folder, resume=False)
    (folder / "checkpoint_latest.pth").write_bytes(b"")
    with pytest.raises(UserError, match="holds a run already"):
        check_existing(settings, folder, resume=False)


def test_train_fold_case_counts_follow_nnunet_kfold(tmp_path):
    """The banner's count: KFold(5)'s split sizes, or splits_final.json's."""
    from medgmae_trainers.finetune.fractions import fold_training_cases

    (tmp_path / "dataset.json").write_text(json.dumps({"numTraining": 7}))
    assert [fold_training_cases(tmp_path, f) for f in range(5)] == [5, 5, 6, 6, 6]
    assert fold_training_cases(tmp_path, "all") == 7
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}] * 6))
    assert fold_training_cases(tmp_path, 5) == 2


# ---------------------------------------------------------------- medgmae_evaluate

@pytest.fixture
def ref_pred(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i in range(2):
        write_label_map(gt / f"case_{i}.nii.gz", reference_case(i))
        write_label_map(pred / f"case_{i}.nii.gz", reference_case(i))
    write_dataset_json(gt / "dataset.json")
    return gt, pred


def evaluate(capsys, gt, pred, *fragments, args=()):
    from evaluation.cli import main

    return refused(capsys, main, ["--ref", gt, "--pred", pred, "--no-pbar", *args], *fragments,
                   unchanged=[gt.parent])


def test_evaluate_truncated_prediction(ref_pred, capsys):
    gt, pred = ref_pred
    path = truncate(pred / "case_1.nii.gz", keep=0.7)
    evaluate(capsys, gt, pred, path, "corrupt or truncated gzip stream")


def test_evaluate_zero_byte_reference(ref_pred, capsys):
    gt, pred = ref_pred
    path = zero_bytes(gt / "case_0.nii.gz")
    evaluate(capsys, gt, pred, path, "empty file")


def test_evaluate_non_integer_prediction(ref_pred, capsys):
    gt, pred = ref_pred
    path = pred / "case_0.nii.gz"
    image = sitk.ReadImage(str(path))
    floats = sitk.GetImageFromArray(sitk.GetArrayFromImage(image).astype(np.float32) * 0.5)
    floats.CopyInformation(image)
    sitk.WriteImage(floats, str(path), useCompression=True)
    evaluate(capsys, gt, pred, path, "integer")


def test_evaluate_tolerance_out_of_range(ref_pred, capsys):
    gt, pred = ref_pred
    evaluate(capsys, gt, pred, "--tolerance", ">= 0", args=["--tolerance", "-1"])


def test_evaluate_processes_out_of_range(ref_pred, capsys):
    gt, pred = ref_pred
    evaluate(capsys, gt, pred, "-np 0", ">= 1", args=["-np", "0"])


def test_evaluate_unwritable_out(ref_pred, tmp_path, capsys, not_writable):
    gt, pred = ref_pred
    folder = not_writable(tmp_path / "elsewhere")
    folder.mkdir()
    evaluate(capsys, gt, pred, folder, "not writable", args=["-o", folder / "summary.json"])


# ---------------------------------------------------------------- medgmae_reconstruct

def reconstruct(capsys, volume, tmp_path, *fragments, args=()):
    from medgmae_trainers.reconstruction.cli import main

    return refused(capsys, main, [volume, "--out", tmp_path / "out", "--iterations", "2", "--no-pbar", *args],
                   *fragments, unchanged=[tmp_path])


def test_reconstruct_truncated_volume(tmp_path, capsys):
    path = truncate(write_ct(tmp_path / "ct.nii.gz", small_ct()))
    reconstruct(capsys, path, tmp_path, path, "corrupt or truncated gzip stream")


def test_reconstruct_nan_voxels(tmp_path, capsys):
    voxels = small_ct(dtype=np.float32)
    voxels[5, 5, 5:7] = np.nan
    path = write_ct(tmp_path / "ct.nii.gz", voxels)
    reconstruct(capsys, path, tmp_path, path, "2 voxels are NaN")


def test_reconstruct_4d_volume(tmp_path, capsys):
    path = tmp_path / "ct.nii.gz"
    volume = sitk.GetImageFromArray(small_ct())
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(path))
    reconstruct(capsys, path, tmp_path, path, "4D image")


@pytest.mark.parametrize("flag, value, rule", [("--views", "0", ">= 1"), ("--cutoff", "0", "> 0"),
                                              ("--photons", "-5", ">= 0")])
def test_reconstruct_argument_out_of_range(tmp_path, capsys, flag, value, rule):
    path = write_ct(tmp_path / "ct.nii.gz", small_ct())
    reconstruct(capsys, path, tmp_path, flag, rule, args=[flag, value])


def test_reconstruct_medgmae_init_without_checkpoint(tmp_path, capsys):
    path = write_ct(tmp_path / "ct.nii.gz", small_ct())
    reconstruct(capsys, path, tmp_path, "--init medgmae needs --checkpoint", args=["--init", "medgmae"])


def test_reconstruct_checkpoint_that_is_not_a_checkpoint(tmp_path, capsys):
    path = write_ct(tmp_path / "ct.nii.gz", small_ct())
    (tmp_path / "ckpt.pt").write_bytes(b"\x00" * 100)
    reconstruct(capsys, path, tmp_path, tmp_path / "ckpt.pt",
                args=["--init", "medgmae", "--checkpoint", tmp_path / "ckpt.pt"])


def test_reconstruct_unwritable_out(tmp_path, capsys, not_writable):
    path = write_ct(tmp_path / "ct.nii.gz", small_ct())
    not_writable(tmp_path)
    reconstruct(capsys, path, tmp_path, tmp_path / "out", "not writable")


# ---------------------------------------------------------------- medgmae_classify

@pytest.mark.parametrize("flag, value, rule", [
    ("--epochs", "0", ">= 1"), ("--flip", "1.5", "in [0, 1]"), ("--fraction", "0", "in (0, 1]"),
    ("--spacing-xyz", "0 1.5 3", "> 0")])
def test_classify_train_argument_out_of_range(nnunet_env, capsys, flag, value, rule):
    """Refused before the dataset is looked up or preprocessed."""
    from medgmae_trainers.classification.cli import main

    refused(capsys, main, ["train", "NoSuchData", "--init", "scratch", flag, *value.split()], flag, rule,
            unchanged=[nnunet_env["nnUNet_preprocessed"], nnunet_env["nnUNet_results"]])


def test_classify_predict_processes_out_of_range(nnunet_env, tmp_path, capsys):
    """Refused before the dataset is looked up (0 once ran as 1, unsaid)."""
    from medgmae_trainers.classification.cli import main

    refused(capsys, main, ["predict", "NoSuchData", "--model", tmp_path / "run", "-np", "0"], "-np 0", ">= 1",
            unchanged=[nnunet_env["nnUNet_preprocessed"], tmp_path])


def test_classify_train_hu_window_upside_down(nnunet_env, capsys):
    from medgmae_trainers.classification.cli import main

    refused(capsys, main, ["train", "NoSuchData", "--init", "scratch", "--hu-window", "500", "-500"],
            "--hu-window", unchanged=[nnunet_env["nnUNet_preprocessed"]])


def test_classify_truncated_image(nnunet_env, capsys):
    """The classification preprocessing (which reads CT-RATE's volumes where they are) reads whole.
    It is resumable case by case, so the contract is: no case file written, nothing in the results."""
    from medgmae_trainers.classification.cli import main
    from preprocessing.phantom import generate_dataset

    raw = generate_dataset(nnunet_env["nnUNet_raw"], n_train=2, n_test=1, spacing_scale=4.0, workers=1,
                           pbar=False, log=lambda *a: None, findings=0.5, dataset_id=991)
    path = truncate(raw / CASE_IMAGE)
    code = main(["train", "991", "--init", "scratch", "--epochs", "1", "--size-xyz", "32", "32", "16", "--no-pbar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(path) in err[0] and "corrupt or truncated gzip stream" in err[0]
    written = [p for var in ("nnUNet_preprocessed", "nnUNet_results") for p in nnunet_env[var].rglob("*") if p.is_file()]
    assert written == []


# ---------------------------------------------------------------- medgmae_register

@pytest.mark.parametrize("flag, value, rule", [
    ("--ncc-kernel", "4", "must be odd"), ("--steps", "0", ">= 1"), ("--lr", "0", "> 0"), ("--w-diff", "-1", ">= 0"),
    ("--patch", "12", "power of two >= 4")])
def test_register_train_argument_out_of_range(nnunet_env, tmp_path, capsys, flag, value, rule):
    from medgmae_trainers.registration.cli import main

    refused(capsys, main, ["train", "-d", tmp_path / "none", "--init", "scratch", flag, value], flag, rule,
            unchanged=[nnunet_env["nnUNet_raw"], nnunet_env["nnUNet_results"]])


def test_register_train_unwritable_out(nnunet_env, tmp_path, capsys, not_writable):
    """Refused before the phantom registration dataset is made or any training."""
    from medgmae_trainers.registration.cli import main

    not_writable(tmp_path)
    refused(capsys, main, ["train", "--init", "scratch", "--out", tmp_path / "run", "--no-pbar"], tmp_path / "run",
            "not writable", unchanged=[nnunet_env["nnUNet_results"]])


def test_register_convert_oasis_truncated_image(nnunet_env, tmp_path, capsys):
    from medgmae_trainers.registration.cli import main

    source = tmp_path / "OASIS"
    for sid in (1, 2, 440):
        subject = source / f"OASIS_OAS1_{sid:04d}_MR1"
        write_ct(subject / "aligned_norm.nii.gz", small_ct((16, 16, 16), seed=sid).astype(np.float32))
        write_ct(subject / "aligned_seg35.nii.gz", (small_ct((16, 16, 16), seed=sid) > 100).astype(np.uint8))
    path = truncate(source / "OASIS_OAS1_0002_MR1" / "aligned_norm.nii.gz")
    refused(capsys, main, ["convert", "oasis", source, "--out", tmp_path / "out"], path,
            "corrupt or truncated gzip stream", unchanged=[tmp_path / "out", nnunet_env["nnUNet_raw"]])


# ---------------------------------------------------------------- medgmae_make_phantom

@pytest.mark.parametrize("args, fragment", [(["--findings", "--prevalence", "2"], "--prevalence"),
                                            (["--spacing-scale", "0"], "--spacing-scale"),
                                            (["--dataset-id", "1000"], "--dataset-id"),
                                            (["-np", "0"], "-np 0")])
def test_phantom_argument_out_of_range(nnunet_env, capsys, args, fragment):
    from preprocessing.phantom.cli import main

    refused(capsys, main, ["-n", "1", "--no-pbar", *args], fragment, unchanged=[nnunet_env["nnUNet_raw"]])


def test_phantom_damaged_case_is_not_reused(nnunet_env, capsys):
    from preprocessing.phantom.cli import main

    argv = ["-n", "1", "--spacing-scale", "4", "-np", "1", "--no-pbar"]
    assert main(argv) == 0
    path = truncate(nnunet_env["nnUNet_raw"] / DATASET / CASE_LABEL)
    refused(capsys, main, argv, path, "remove", unchanged=[nnunet_env["nnUNet_raw"]])


def test_phantom_unwritable_raw_folder(nnunet_env, capsys, not_writable):
    from preprocessing.phantom.cli import main

    folder = not_writable(nnunet_env["nnUNet_raw"])
    refused(capsys, main, ["-n", "1", "--no-pbar"], folder, "not writable", unchanged=[folder])


# ---------------------------------------------------------------- medgmae_predict

def predict(capsys, env, images, out, *fragments, args=()):
    from medgmae_trainers.finetune.predict_cli import main

    return refused(capsys, main, ["-i", images, "-o", out, "-d", "990", "-tr", "MedGMAETrainer_scratch_f100",
                                  *args], *fragments, unchanged=[out.parent, env["nnUNet_results"]])


def test_predict_truncated_input_image(nnunet_env, tmp_path, capsys):
    path = truncate(write_ct(tmp_path / "in" / "case_0000.nii.gz", small_ct()))
    predict(capsys, nnunet_env, tmp_path / "in", tmp_path / "out" / "pred", path, "corrupt or truncated gzip stream")


def test_predict_processes_out_of_range(nnunet_env, tmp_path, capsys):
    write_ct(tmp_path / "in" / "case_0000.nii.gz", small_ct())
    predict(capsys, nnunet_env, tmp_path / "in", tmp_path / "out" / "pred", "-npp -1", ">= 0", args=["-npp", "-1"])


def test_predict_unwritable_output(nnunet_env, tmp_path, capsys, not_writable):
    write_ct(tmp_path / "in" / "case_0000.nii.gz", small_ct())
    folder = not_writable(tmp_path / "out")
    folder.mkdir()
    predict(capsys, nnunet_env, tmp_path / "in", folder / "pred", folder / "pred", "not writable")


# ---------------------------------------------------------------- runtime: what every command shares

COMMAND_PARSERS = {
    "medgmae_make_phantom": "preprocessing.phantom.cli", "medgmae_plan_and_preprocess": "preprocessing.plan_and_preprocess",
    "medgmae_convert": "preprocessing.convert.cli", "medgmae_pretrain": "medgmae_trainers.pretrain.cli",
    "medgmae_evaluate": "evaluation.cli", "medgmae_reconstruct": "medgmae_trainers.reconstruction.cli",
    "medgmae_classify": "medgmae_trainers.classification.cli", "medgmae_register": "medgmae_trainers.registration.cli",
    "medgmae_train": "medgmae_trainers.finetune.cli", "medgmae_predict": "medgmae_trainers.finetune.predict_cli"}


@pytest.mark.parametrize("command", list(COMMAND_PARSERS))
def test_help_states_every_numeric_range(command):
    """Every numeric flag (but seeds and choices) says in --help the range its command checks."""
    import argparse
    import importlib
    import re

    rule = re.compile(r">=|> 0|<|in [(\[]|\d\.\.\d|power of two|multiple|odd")

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)
    unranged = [f"{parser.prog} {action.option_strings[-1]}"
                for parser in parsers(importlib.import_module(COMMAND_PARSERS[command]).build_parser())
                for action in parser._actions
                if action.type in (int, float) and action.option_strings and action.choices is None
                and "seed" not in action.dest and not rule.search(action.help or "")]
    assert unranged == []


def test_argparse_errors_are_one_line(capsys):
    from evaluation.cli import main

    refused(capsys, main, ["--tolerance", "one"], "--tolerance", "invalid float value")


def test_console_scripts(nnunet_env, tmp_path):
    """The installed entry points keep the contract (one line, exit 2) outside pytest's capture."""
    for name, args, fragment in (
            ("medgmae_pretrain", ["-d", "990", "--mask-ratio", "0"], "--mask-ratio 0"),
            ("medgmae_train", ["Phantom", "3d_fullres", "--init", "scratch", "--fold", "7"], "no dataset matches"),
            ("medgmae_reconstruct", [tmp_path / "missing.nii.gz", "--out", tmp_path / "out"], "no such file")):
        result = console_script(name, args, nnunet_env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], (name, result.stderr)
        assert lines[0].startswith(f"{name}: error:")


# ---------------------------------------------------------------- repaired rather than refused

def test_image_smaller_than_the_patch_is_padded_with_air(nnunet_env, tmp_path, capsys):
    """A 20^3 image (smaller than the 96^3 patch) is kept: preprocessed as it is, and its pretraining
    crop is the image inside padding that reads as air (0 after the CT window)."""
    from medgmae_plans.constants import window_hu
    from preprocessing.plan_and_preprocess import main
    from preprocessing.collections import collection_data_folder, folder_cases, load_case
    from preprocessing.pretrain_sampling import extract_crop

    hu = small_ct((20, 20, 20), dtype=np.float32)
    write_ct(tmp_path / "images" / "tiny.nii.gz", hu, spacing=(1.5, 1.5, 1.5))
    assert main(["--images", str(tmp_path / "images"), "--name", "Tiny", "-np", "1", "--no-pbar"]) == 0
    image, _ = load_case(folder_cases(collection_data_folder("Tiny"), labelled=False)[0])
    assert image.shape == (1, 20, 20, 20)
    # stored with the identity direction (LPS), read in the reorienting reader's RAS: y and x reversed
    np.testing.assert_allclose(image[0], window_hu(hu)[:, ::-1, ::-1], atol=1e-6)
    crop = extract_crop(image, [10, 10, 10], 96)
    assert crop.shape == (1, 96, 96, 96)
    np.testing.assert_array_equal(crop[0, 38:58, 38:58, 38:58], image[0])
    assert crop.sum() == pytest.approx(image.sum(), rel=1e-6)  # the padding is all 0


# ---------------------------------------------------------------- what the commands print

def test_evaluate_no_nsd_prints_no_nsd(nnunet_env, tmp_path, capsys):
    """--no-nsd on results folders: the per-run line has Dice only (it once said "NSD@nanmm")."""
    from evaluate_support import make_gt, make_run

    from evaluation.cli import main

    cases = {f"phantom_{i:03d}": reference_case(i) for i in range(2)}
    make_gt(nnunet_env["nnUNet_preprocessed"], cases)
    make_run(nnunet_env["nnUNet_results"], "scratch", 0.1, 0, cases)
    assert main([DATASET, "--no-nsd", "-o", str(tmp_path / "eval"), "--no-pbar"]) == 0
    err = capsys.readouterr().err
    assert "Dice 1.0000" in err and "NSD@" not in err and "nan" not in err.lower().replace("nanmean", "")
