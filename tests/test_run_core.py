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


def _stop_at(calls: int, real, how: str):
    """`real`, wrapped so that its `calls`-th call stops the run first: `signal` sends this process
    SIGTERM (as a scheduler would: the loop finishes that step, saves and raises `Interrupted`),
    `crash` dies there without saving (as SIGKILL would: the latest checkpoint is the last periodic one)."""
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            if how == "crash":
                raise RuntimeError("killed")
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    return wrapped


def _stopped(how: str, train, match: str = ""):
    """Run `train` (wrapped by `_stop_at`) to its stop: SIGTERM exits 128 + 15, a crash is the crash."""
    if how == "crash":
        with pytest.raises(RuntimeError, match="killed"):
            train()
        return
    with pytest.raises(Interrupted, match=match) as stop:
        train()
    assert stop.value.code == 128 + signal.SIGTERM


def _resumed_as_straight(straight, resumed, key: str, rows: list[int]):
    """The resumed run ends with the uninterrupted run's weights, and its metrics hold each row once."""
    _same_weights(straight / run.FINAL, resumed / run.FINAL)
    assert [json.loads(line)[key] for line in (resumed / "metrics.jsonl").read_text().splitlines()] == rows


# --- the three loops: stopped by SIGTERM or a crash, resumed, the same as never stopped -----------------

@pytest.mark.parametrize("how, calls, saved_at", [("signal", 2, 2), ("crash", 3, 2)])
def test_pretraining_resumes_bit_for_bit(tmp_path, monkeypatch, how, calls, saved_at):
    from medgmae_trainers.pretrain import trainer

    kw = dict(decoder="voxel", steps=4, save_every=2, log_every=1)
    trainer.pretrain(pretrain_settings(tmp_path / "straight", **kw), pretrain_cases())
    resumed = tmp_path / "resumed"
    with monkeypatch.context() as m:  # a signal in step 2 saves after it; a crash in step 3 leaves step 2's
        m.setattr(trainer, "train_step", _stop_at(calls, trainer.train_step, how))
        _stopped(how, lambda: trainer.pretrain(pretrain_settings(resumed, **kw), pretrain_cases()),
                 "at step 2; continue from step 2")
    latest = torch.load(resumed / run.LATEST, weights_only=False)
    assert latest["step"] == saved_at and set(latest["rng"][0]) >= {"torch", "numpy", "python"}
    trainer.pretrain(pretrain_settings(resumed, resume=True, **kw), pretrain_cases())
    _resumed_as_straight(tmp_path / "straight", resumed, "step", [1, 2, 3, 4])


def _classification_data(tmp_path):
    from medgmae_trainers.classification.data import Geometry
    from preprocessing.layouts.classification import LabelTable

    rng = np.random.default_rng(0)
    folder = tmp_path / "volumes"
    folder.mkdir(exist_ok=True)
    cases = [f"case_{i}" for i in range(4)]
    for case in cases:
        np.save(folder / f"{case}.npy", rng.random((16, 16, 16)).astype(np.float16))
    table = LabelTable(["a", "b"], cases, ["train"] * 4, np.array([[0, 1], [1, 0], [1, 1], [0, 0]], np.uint8))
    geometry = Geometry(spacing_zyx=(4.0, 4.0, 4.0), size_zyx=(16, 16, 16)).to_json()
    return table, folder, geometry


def _classification_settings(tmp_path, out, **kw):
    from medgmae_trainers.classification import trainer

    table, folder, geometry = _classification_data(tmp_path)  # the same volumes for every run
    ckpt = tmp_path / "pretrained.pt"
    if not ckpt.exists():
        _pretrain_checkpoint(ckpt)
    # flip draws from torch's RNG, so only a restored RNG repeats epoch 2's flips
    return trainer.TrainSettings(dataset="toy", pretrained=str(ckpt), epochs=2, batch_size=2, flip=0.5,
                                 geometry=geometry, out=str(out), pbar=False, **kw), table, folder


@pytest.mark.parametrize("how", ["signal", "crash"])
def test_classification_resumes_bit_for_bit(tmp_path, monkeypatch, how):
    from medgmae_trainers.classification import data, trainer

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    trainer.train(*_classification_settings(tmp_path, straight))
    s, table, folder = _classification_settings(tmp_path, resumed)
    with monkeypatch.context() as m:  # while epoch 2 loads its first case: a signal stops after that batch
        m.setattr(data, "load_volume", _stop_at(5, data.load_volume, how))
        _stopped(how, lambda: trainer.train(s, table, folder), "in epoch 2; continue from epoch 1")
    assert torch.load(resumed / run.LATEST, weights_only=False)["epoch"] == 1  # either way: epoch 2 is redone
    with pytest.raises(UserError, match=r"\['epochs'\]"):  # another length is another run
        trainer.train(trainer.TrainSettings(**{**asdict(s), "epochs": 3}), table, folder, resume=True)
    trainer.train(s, table, folder, resume=True)
    _resumed_as_straight(straight, resumed, "epoch", [1, 2])


def _registration_settings(nnunet_env, out, **kw):
    from medgmae_trainers.registration import trainer
    from medgmae_trainers.registration.phantom_pairs import build_phantom_pairs

    root = build_phantom_pairs(nnunet_env["nnUNet_raw"], pbar=False, log=lambda *a: None, **TINY)
    return trainer.TrainSettings(dataset=str(root), network="voxelmorph", ncc_kernel=5, lr=1e-3, steps=4,
                                 val_every=0, save_every=2, out=str(out), pbar=False, **kw)


@pytest.mark.parametrize("how, saved_at", [("signal", 3), ("crash", 2)])
def test_registration_resumes_bit_for_bit(nnunet_env, tmp_path, monkeypatch, how, saved_at):
    from medgmae_trainers.registration import losses, trainer

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    trainer.train(_registration_settings(nnunet_env, straight))
    with monkeypatch.context() as m:  # in step 3: a signal saves after it, a crash leaves step 2's checkpoint
        m.setattr(losses.RegistrationLoss, "forward", _stop_at(3, losses.RegistrationLoss.forward, how))
        _stopped(how, lambda: trainer.train(_registration_settings(nnunet_env, resumed)),
                 "at step 3; continue from step 3")
    latest = resumed / run.LATEST
    state = torch.load(latest, weights_only=False)
    assert state["step"] == saved_at and "rng" in state
    if how == "crash":  # checkpoints written before the RNG was saved (the old format) resume too, and exactly
        del state["rng"]
        torch.save(state, latest)
    trainer.train(_registration_settings(nnunet_env, resumed), resume=True)
    _resumed_as_straight(straight, resumed, "step", [1, 2, 3, 4])


# --- a non-finite loss or gradient: one line naming the step and lr, exit 2, no final checkpoint ----------

def _poisoned(build, what: str):
    """`build` (a loop's model builder), wrapped so that the model's first training step has a NaN loss
    (NaN inputs), or an infinite gradient under a finite loss."""
    def wrapped(*args, **kwargs):
        model, info = build(*args, **kwargs)
        if what == "loss":
            model.register_forward_pre_hook(lambda module, inputs: tuple(a * float("nan") for a in inputs))
        else:
            first = next(p for p in model.parameters() if p.requires_grad)
            first.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        return model, info
    return wrapped


def _exits_2_in_one_line(train, capsys, message: str):
    assert cli_entry(lambda argv: train())([]) == 2
    err = capsys.readouterr().err  # the run's log above it, then the error: one line, no traceback
    assert message in err.strip().splitlines()[-1] and "(lr " in err.strip().splitlines()[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_classification_stops_on_a_non_finite_step(tmp_path, monkeypatch, capsys, what):
    from medgmae_trainers.classification import trainer

    monkeypatch.setattr(trainer, "build_classifier", _poisoned(trainer.build_classifier, what))
    s, table, folder = _classification_settings(tmp_path, tmp_path / "run")
    _exits_2_in_one_line(lambda: trainer.train(s, table, folder), capsys, f"non-finite {what} at step 1 (epoch 1)")
    assert not (tmp_path / "run" / run.FINAL).exists() and not (tmp_path / "run" / run.LATEST).exists()


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_registration_stops_on_a_non_finite_step(nnunet_env, tmp_path, monkeypatch, capsys, what):
    from medgmae_trainers.registration import trainer

    monkeypatch.setattr(trainer, "build_model", _poisoned(trainer.build_model, what))
    s = _registration_settings(nnunet_env, tmp_path / "run")
    _exits_2_in_one_line(lambda: trainer.train(s), capsys, f"non-finite {what} at step 1 (pair ")
    assert not (tmp_path / "run" / run.FINAL).exists() and not (tmp_path / "run" / run.LATEST).exists()


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


# --- the --device flag -----------------------------------------------------------------------------------

def test_one_reading_of_the_device_flag(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run.resolve_device("auto") == run.resolve_device(None) == torch.device("cpu")
    assert run.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="^--device cuda: no CUDA device is available$"):
        run.resolve_device("cuda")
    with pytest.raises(UserError, match="^-device cuda:1: no CUDA device"):  # the flag as the command spells it
        run.resolve_device("cuda:1", "-device")
    with pytest.raises(UserError, match="^--device 'gpu': not a torch device"):
        run.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run.resolve_device("auto") == torch.device("cuda") and run.resolve_device("cuda:1") == torch.device("cuda:1")


# --- the commands' defaults are the settings' ------------------------------------------------------------

@pytest.mark.parametrize("command", ["classification", "registration"])
def test_train_flags_default_to_the_settings_fields(command):
    import dataclasses
    import importlib

    cli = importlib.import_module(f"medgmae_trainers.{command}.cli")
    settings = importlib.import_module(f"medgmae_trainers.{command}.trainer").TrainSettings
    args = vars(cli.build_parser().parse_args(["train", "x", "--init", "scratch"] if command == "classification"
                                             else ["train", "--init", "scratch"]))
    flag_of = {"n_boot": "bootstrap"}  # fields whose flag is named otherwise
    # device: the commands pick cuda when there is one ("auto"); the dataclass, for library callers, cpu
    checked = [f for f in dataclasses.fields(settings) if f.default is not dataclasses.MISSING
               and f.name not in ("device", "out", "pbar", "pretrained")]
    assert checked and all(args[flag_of.get(f.name, f.name)] == f.default for f in checked), \
        {f.name: (args.get(flag_of.get(f.name, f.name)), f.default) for f in checked}
