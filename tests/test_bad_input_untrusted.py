"""The bad-input catalogue, second part (issue 27): nothing runs that should not, nothing is accepted wrongly.

Kinds, one fault in one command per test (checked as in tests/test_bad_input.py: exit code 2, one
line naming the file or argument, no traceback, output folders unchanged):

- a pickle payload planted in every file a command unpickles: pretraining checkpoints
  (`medgmae_train --pretrained`, `medgmae_reconstruct --checkpoint`, `medgmae_pretrain --resume`,
  `medgmae_classify train --pretrained` / `predict --model`, `medgmae_register train --pretrained` /
  `predict --model`), nnU-Net checkpoints (`medgmae_predict`, `medgmae_train --continue`), nnU-Net's
  case `.pkl` (`medgmae_pretrain`, `medgmae_train`, `medgmae_reconstruct` of a `.b2nd`) and IXI's
  pickles (`medgmae_register convert ixi`): refused, and the payload's marker file is never written;
  our own checkpoints (RNG states in plain types) still load, older ones with numpy RNG states too.
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bad_input_support import DATASET, build_phantom, build_preprocessed, copy_into, refused, small_ct, write_ct
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


@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory):
    return build_phantom(tmp_path_factory.mktemp("untrusted_phantom"))


@pytest.fixture(scope="session")
def preprocessed_source(tmp_path_factory, phantom_source):
    root = tmp_path_factory.mktemp("untrusted_preprocessed")
    shutil.copytree(phantom_source.parent, root / "nnUNet_raw")
    return build_preprocessed(root)


@pytest.fixture
def preprocessed(nnunet_env, preprocessed_source):
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        copy_into(preprocessed_source[var] / DATASET, nnunet_env[var])
    return nnunet_env


# ---------------------------------------------------------------- checkpoints

def test_train_pretrained_checkpoint_with_a_payload(preprocessed, tmp_path, capsys, marker):
    from medgmae_trainers.finetune.cli import main

    path = planted_checkpoint(tmp_path / "ckpt.pt", marker)
    refused(capsys, main, ["Phantom", "3d_fullres", "--device", "cpu", "--pretrained", path], path,
            "refused to load", "posix.system", unchanged=[preprocessed["nnUNet_results"]])


def test_reconstruct_checkpoint_with_a_payload(tmp_path, capsys, marker):
    from reconstruction.cli import main

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
    from medgmae_plans.safe_load import UnsafePickle
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
    from reconstruction.cli import main

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
