"""medgmae_register end to end on a tiny phantom: train, exact resume, predict, evaluate, one-line errors."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from medgmae_trainers.registration import losses
from medgmae_trainers.registration.cli import main as register
from medgmae_trainers.registration.phantom_pairs import build_phantom_pairs

TINY = dict(n_train=3, n_val=2, n_test=2, spacing_mm=16.0, shape_zyx=(16, 16, 32),
            box_lo_zyx=(-200.0, -128.0, -256.0), max_disp_mm=24.0)
TRAIN = ["--init", "scratch", "--feature-size", "4", "--ncc-kernel", "5", "--lr", "1e-3", "--no-pbar"]


@pytest.fixture
def tiny(nnunet_env):
    return build_phantom_pairs(nnunet_env["nnUNet_raw"], pbar=False, log=lambda *a: None, **TINY)


def test_train_predict_evaluate(tiny, tmp_path):
    run = tmp_path / "run"
    assert register(["train", "-d", str(tiny), *TRAIN, "--steps", "2", "--val-every", "2", "--out", str(run)]) == 0
    for name in ("checkpoint_final.pt", "train.json", "train.log", "metrics.jsonl", "training_curves.png"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoint_latest.pt").exists()
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and ["val_mean_dice" in r for r in recs] == [False, True]
    assert register(["predict", "--model", str(run), "-d", "Phantom", "--split", "val", "--no-pbar"]) == 0
    pred = run / "val"
    names = [p["name"] for p in json.loads((pred / "predict.json").read_text())["results"]["pairs"]]
    assert len(names) == 4
    for n in names:
        for suffix in ("_warped.nii.gz", "_warped_seg.nii.gz", "_ddf.nii.gz", ".png"):
            assert (pred / f"{n}{suffix}").is_file(), n + suffix
    assert register(["evaluate", str(pred), "--no-pbar"]) == 0
    ev = json.loads((pred / "evaluation.json").read_text())
    s = ev["summary"]
    assert 0 < s["mean_dice"] <= 1 and 0 < s["mean_dice_before"] <= 1 and 0 <= s["nonpos_jacobian_pct"] <= 100
    assert s["epe_mm_before"] > 0 and "epe_mm" in s and "spleen" in ev["per_structure"]
    # evaluation from the files agrees with the validation the trainer ran in memory on the same model
    val = json.loads((run / "train.json").read_text())["results"]
    assert s["mean_dice"] == pytest.approx(val["val_mean_dice"], abs=1e-6)
    assert "| mean Dice (registered) |" in (pred / "evaluation.md").read_text()


def test_interrupted_run_resumes_exactly(tiny, tmp_path, monkeypatch):
    # VoxelMorph: the same loop and checkpoints as the ViT network, at a twentieth of the checkpoint size
    args = ["train", "-d", str(tiny), "--network", "voxelmorph", "--ncc-kernel", "5", "--lr", "1e-3", "--no-pbar",
            "--steps", "3", "--val-every", "0", "--save-every", "1"]
    assert register([*args, "--out", str(tmp_path / "whole")]) == 0
    calls = {"n": 0}
    forward = losses.RegistrationLoss.forward

    def interrupt_after_one(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the loop saves checkpoint_latest.pt and stops
        return forward(self, *a, **k)

    monkeypatch.setattr(losses.RegistrationLoss, "forward", interrupt_after_one)
    assert register([*args, "--out", str(tmp_path / "parts")]) == 130
    assert (tmp_path / "parts" / "checkpoint_latest.pt").is_file()
    assert register([*args, "--out", str(tmp_path / "parts")]) == 2  # without --resume: refused
    monkeypatch.setattr(losses.RegistrationLoss, "forward", forward)
    assert register([*args, "--out", str(tmp_path / "parts"), "--resume"]) == 0
    a = torch.load(tmp_path / "whole" / "checkpoint_final.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "parts" / "checkpoint_final.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((tmp_path / "parts" / "train.json").read_text())
    assert info["settings"]["model"]["network"] == "voxelmorph" and info["results"]["steps"] == 3


@pytest.mark.parametrize("command", [[], ["train"], ["predict"], ["evaluate"], ["convert"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        register([*command, "--help"])
    assert exit_.value.code == 0 and "usage: medgmae_register" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--no-pbar"], "exactly one of --pretrained CKPT or --init scratch"),
    (["train", "--pretrained", "{tmp}/missing.pt", "--no-pbar"], "missing.pt does not exist"),
    (["train", "--pretrained", "{tmp}/junk.pt", "--no-pbar"], "junk.pt: not a readable torch checkpoint"),
    (["predict", "--model", "{tmp}", "--no-pbar"], "checkpoint_final.pt does not exist"),
    (["evaluate", "{tmp}", "--no-pbar"], "has no predict.json"),
    (["convert", "ixi", "{tmp}/nothing", "--no-pbar"], "atlas.pkl is missing"),
])
def test_bad_input_is_one_line(tiny, tmp_path, capsys, argv, message):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "train":
        argv[1:1] = ["-d", str(tiny), "--out", str(tmp_path / "run")]
    assert register(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


@pytest.mark.slow
@pytest.mark.timeout(2700)  # 100 steps took ~10 s each on the shared two-core machine
def test_short_cpu_training_beats_unregistered_dice(nnunet_env, tmp_path):
    # the default phantom pairs (6 mm, 32 x 48 x 64): on the coarser 12 mm copy 100 steps were not enough
    root = build_phantom_pairs(nnunet_env["nnUNet_raw"], pbar=False, log=lambda *a: None)
    out = tmp_path / "run"
    assert register(["train", "-d", str(root), "--init", "scratch", "--feature-size", "8", "--lr", "1e-3",
                     "--steps", "100", "--val-every", "0", "--no-pbar", "--out", str(out)]) == 0
    r = json.loads((out / "train.json").read_text())["results"]
    assert r["val_mean_dice"] > r["val_mean_dice_before"], r
    assert r["val_nonpos_jacobian_pct"] < 1.0, r
