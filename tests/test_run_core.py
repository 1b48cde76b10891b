"""The training-run core (`medgmae_trainers.run`) and the three loops on it: exact resume after a signal
for pretraining, classification and registration, the exit code, the schedule, the no-decay rule,
the checkpoint reader, the metrics log, the settings check and the RNG state (CUDA mocked)."""
from __future__ import annotations

import json
import os
import random
import signal
from dataclasses import asdict

import numpy as np
import pytest
import torch

from medgmae_plans.runtime import Interrupted, UserError, cli_entry
from medgmae_trainers import run
from test_classify import _pretrain_checkpoint
from test_pretrain import cases as pretrain_cases, settings as pretrain_settings
from test_register_cli import TINY

torch.set_num_threads(1)


def _same_weights(a_path, b_path):
    a = torch.load(a_path, weights_only=False)["model"]
    b = torch.load(b_path, weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _sigterm_at(calls: int, real):
    """`real`, wrapped so that its `calls`-th call sends this process SIGTERM first (as a scheduler would)."""
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    return wrapped


# --- the three loops: stopped by SIGTERM, resumed, the same as never stopped --------------------------

def test_pretraining_resumes_bit_for_bit_after_sigterm(tmp_path, monkeypatch):
    from medgmae_trainers.pretrain import trainer

    kw = dict(decoder="voxel", steps=4, save_every=2, log_every=1)
    trainer.pretrain(pretrain_settings(tmp_path / "straight", **kw), pretrain_cases())
    with monkeypatch.context() as m:
        m.setattr(trainer, "train_step", _sigterm_at(2, trainer.train_step))  # during step 2: saved after it
        with pytest.raises(Interrupted) as stop:
            trainer.pretrain(pretrain_settings(tmp_path / "resumed", **kw), pretrain_cases())
    assert stop.value.code == 128 + signal.SIGTERM
    resumed = tmp_path / "resumed"
    latest = torch.load(resumed / run.LATEST, weights_only=False)
    assert latest["step"] == 2 and set(latest["rng"][0]) >= {"torch", "numpy", "python"}
    trainer.pretrain(pretrain_settings(resumed, resume=True, **kw), pretrain_cases())
    _same_weights(tmp_path / "straight" / run.FINAL, resumed / run.FINAL)
    assert [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def _classification_data(tmp_path):
    from medgmae_trainers.classification.data import Geometry
    from preprocessing.layouts.classification import LabelTable

    rng = np.random.default_rng(0)
    folder = tmp_path / "volumes"
    folder.mkdir()
    cases = [f"case_{i}" for i in range(4)]
    for case in cases:
        np.save(folder / f"{case}.npy", rng.random((16, 16, 16)).astype(np.float16))
    table = LabelTable(["a", "b"], cases, ["train"] * 4, np.array([[0, 1], [1, 0], [1, 1], [0, 0]], np.uint8))
    geometry = Geometry(spacing_zyx=(4.0, 4.0, 4.0), size_zyx=(16, 16, 16)).to_json()
    return table, folder, geometry


def test_classification_resumes_bit_for_bit_after_sigterm(tmp_path, monkeypatch):
    from medgmae_trainers.classification import data, trainer

    table, folder, geometry = _classification_data(tmp_path)
    ckpt = _pretrain_checkpoint(tmp_path / "pretrained.pt")

    def settings(out):  # flip draws from torch's RNG, so only a restored RNG repeats epoch 2's flips
        return trainer.TrainSettings(dataset="toy", pretrained=str(ckpt), epochs=2, batch_size=2, flip=0.5,
                                     geometry=geometry, out=str(out), pbar=False)

    trainer.train(settings(tmp_path / "straight"), table, folder)
    with monkeypatch.context() as m:  # SIGTERM while epoch 2 loads its first case: stops after that batch
        m.setattr(data, "load_volume", _sigterm_at(5, data.load_volume))
        with pytest.raises(Interrupted, match="in epoch 2; continue from epoch 1") as stop:
            trainer.train(settings(tmp_path / "resumed"), table, folder)
    assert stop.value.code == 128 + signal.SIGTERM
    resumed = tmp_path / "resumed"
    assert torch.load(resumed / run.LATEST, weights_only=False)["epoch"] == 1
    with pytest.raises(UserError, match=r"\['epochs'\]"):  # another length is another run
        trainer.train(trainer.TrainSettings(**{**asdict(settings(resumed)), "epochs": 3}), table, folder, resume=True)
    trainer.train(settings(resumed), table, folder, resume=True)
    _same_weights(tmp_path / "straight" / run.FINAL, resumed / run.FINAL)
    assert [json.loads(line)["epoch"] for line in (resumed / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_registration_exits_143_on_sigterm_and_resumes_bit_for_bit(nnunet_env, tmp_path, monkeypatch):
    from medgmae_trainers.registration import losses
    from medgmae_trainers.registration.cli import main as register
    from medgmae_trainers.registration.phantom_pairs import build_phantom_pairs

    root = build_phantom_pairs(nnunet_env["nnUNet_raw"], pbar=False, log=lambda *a: None, **TINY)
    args = ["train", "-d", str(root), "--network", "voxelmorph", "--ncc-kernel", "5", "--lr", "1e-3", "--no-pbar",
            "--steps", "3", "--val-every", "0", "--save-every", "3"]
    assert register([*args, "--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as m:
        m.setattr(losses.RegistrationLoss, "forward", _sigterm_at(2, losses.RegistrationLoss.forward))
        assert register([*args, "--out", str(tmp_path / "resumed")]) == 128 + signal.SIGTERM
    latest = tmp_path / "resumed" / run.LATEST
    state = torch.load(latest, weights_only=False)
    assert state["step"] == 2 and "rng" in state
    # Checkpoints written before the RNG was saved (the old format) still resume, and exactly.
    del state["rng"]
    torch.save(state, latest)
    assert register([*args, "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    _same_weights(tmp_path / "straight" / run.FINAL, tmp_path / "resumed" / run.FINAL)
    rows = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]


def test_every_command_exits_128_plus_the_signal():
    def stopped(argv):
        raise Interrupted("interrupted by signal 15 at step 3", signal.SIGTERM)

    def ctrl_c(argv):
        raise KeyboardInterrupt

    assert cli_entry(stopped)([]) == 143 and cli_entry(ctrl_c)([]) == 130


# --- schedule and parameter groups ---------------------------------------------------------------------

def test_warmup_cosine_through_lambda_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, run.lr_lambda(warmup=4, total=12))
    lrs = []
    for _ in range(13):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # linear warmup to the peak at step warmup-1
    assert lrs[8] == pytest.approx(1.0) and lrs[12] == pytest.approx(0.0, abs=1e-12)  # cosine: half way, end
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert run.polynomial_decay(10)(0) == 1.0 and run.polynomial_decay(10)(20) == run.polynomial_decay(10)(10)


def test_one_no_decay_rule():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)
            self.norm = torch.nn.LayerNorm(3)
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 3))
            self.queries = torch.nn.Parameter(torch.zeros(1, 4, 3))
            self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 3))
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 3))
            self.frozen = torch.nn.Parameter(torch.zeros(3, 3), requires_grad=False)

    net = Net()
    decay, no_decay = run.param_groups(net, 0.05)
    names = {id(p): n for n, p in net.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [names[id(p)] for p in decay["params"]] == ["linear.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        ["linear.bias", "norm.weight", "norm.bias", "cls_token", "queries", "mask_token", "pos_embed"])


# --- checkpoints, settings, metrics ----------------------------------------------------------------------

def test_checkpoint_reader_refuses_what_is_not_a_checkpoint_of_the_format(tmp_path):
    junk, foreign, good = tmp_path / "junk.pt", tmp_path / "foreign.pt", tmp_path / "good.pt"
    junk.write_bytes(b"not a checkpoint at all")
    torch.save({"format": "someone-else/1"}, foreign)
    torch.save({"format": "medgmae-test/1", "step": 3}, good)
    for path, message in ((junk, "not a readable torch checkpoint"),
                          (foreign, "not a medgmae test checkpoint .expected format 'medgmae-test/1'"),
                          (tmp_path / "absent.pt", "no such test checkpoint")):
        with pytest.raises(UserError, match=message) as err:
            run.load_checkpoint(path, "medgmae-test/1", "test checkpoint")
        assert str(err.value).startswith(str(path))
    with pytest.raises(UserError, match="good.pt: not a medgmae test checkpoint .it holds no config"):
        run.load_checkpoint(good, "medgmae-test/1", "test checkpoint", keys=("config",))
    assert run.load_checkpoint(good, "medgmae-test/1", "test checkpoint")["step"] == 3


def test_resume_state_and_the_one_settings_policy(tmp_path):
    latest = tmp_path / run.LATEST
    assert run.resume_state(latest, True, "medgmae-test/1", "test checkpoint") is None  # nothing saved: fresh
    torch.save({"format": "medgmae-test/1"}, latest)
    with pytest.raises(UserError, match="pass --resume"):
        run.resume_state(latest, False, "medgmae-test/1", "test checkpoint")
    saved = {"lr": 1e-3, "seed": 41, "device": "cuda", "workers": 2, "steps": 100, "out": "/a"}
    run.check_settings(latest, saved, {**saved, "device": "cpu", "workers": 0, "steps": 200, "out": "/b"})
    with pytest.raises(UserError, match=r"\['lr', 'seed'\]"):
        run.check_settings(latest, saved, {**saved, "lr": 1e-4, "seed": 1})


def test_metrics_log_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (2, 4, 6)))
    log = run.MetricsLog(path, start=4)
    log.append({"step": 6, "loss": 0.5})
    assert [r["step"] for r in log.rows()] == [2, 4, 6] and log.rows()[-1]["loss"] == 0.5
    assert run.MetricsLog(path, start=0).rows() == []


# --- RNG -------------------------------------------------------------------------------------------------

def test_rng_state_round_trip_on_cpu():
    state = run.capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    run.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_rng_state_includes_every_cuda_device_when_cuda_exists(monkeypatch):
    device_states = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: device_states)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    state = run.capture_rng()
    assert state["cuda"] is device_states
    run.restore_rng(state)
    assert restored == [(device_states[0], 0), (device_states[1], 1)]
    # A pretraining checkpoint of the old format holds the current device's state alone: it goes back there.
    restored.clear()
    run.restore_rng({**state, "cuda": device_states[1]})
    assert restored == [(device_states[1], "cuda")]
