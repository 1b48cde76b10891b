"""Slow pretraining tests on the synthetic phantom: overfitting, torchrun (gloo, 2 processes), SIGTERM + resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Two phantom cases, generated and preprocessed by the toolkit's own commands (in a subprocess,
    because nnU-Net reads its folder variables once per process)."""
    base = tmp_path_factory.mktemp("phantom")
    env = dict(os.environ, nnUNet_raw=str(base / "raw"), nnUNet_preprocessed=str(base / "pre"),
               nnUNet_results=str(base / "res"), OMP_NUM_THREADS="1")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[var]).mkdir()
    code = ("from preprocessing.phantom import generate_dataset; "
            f"generate_dataset({env['nnUNet_raw']!r}, n_train=2, seed=3, workers=1, pbar=False)")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "preprocessing.plan_and_preprocess", "-d", "990", "-np", "1", "--no-pbar"],
                   check=True, env=env, cwd=ROOT)
    return env


def test_tiny_preset_overfits_one_phantom_crop(phantom):
    from medgmae_trainers.networks import build_networks, network_config
    from medgmae_trainers.pretrain.model import PretrainModel
    from medgmae_trainers.pretrain.trainer import lr_lambda, param_groups
    from preprocessing.collections import list_pretraining_cases, load_case, load_properties
    from preprocessing.pretrain_sampling import crop_centres, extract_crop, SamplingConfig

    torch.set_num_threads(2)
    ref = list_pretraining_cases(["990"], preprocessed=Path(phantom["nnUNet_preprocessed"]))[0]
    image, seg = load_case(ref)
    centre = crop_centres(image, seg, load_properties(ref), SamplingConfig(sub_crops=1, positive_fraction=1.0),
                          np.random.default_rng(0))[0][0]
    crop = torch.from_numpy(extract_crop(image, centre, 96))[None]  # [1, 1, 96, 96, 96]
    torch.manual_seed(41)
    encoder, decoder = build_networks(network_config("tiny"), "gaussian")
    model = PretrainModel(encoder, decoder, "gaussian")
    steps = 300
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(20, steps))

    def held_out_loss() -> float:  # the same eight masks before and after
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(123)
            return float(np.mean([model(crop)["loss"].item() for _ in range(8)]))

    before = held_out_loss()
    for _ in range(steps):
        loss = model(crop)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    after = held_out_loss()
    assert after <= 0.5 * before, (before, after)


def _command(env, out, *extra):
    return [sys.executable, "-m", "medgmae_trainers.pretrain.cli", "-d", "990", "--preset", "tiny",
            "--crop-size", "32", "--patch", "16", "--gaussians", "16", "--batch-size", "2", "--workers", "0",
            "--device", "cpu", "--threads", "1", "--no-pbar", "--out", str(out), "--log-every", "1", *extra]


def test_torchrun_gloo_with_two_processes(phantom, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_command(phantom, out, "--steps", "4")[1:]]
    proc = subprocess.run(cmd, env=phantom, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint_latest.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 4
    assert (out / "checkpoint_final.pt").is_file()
    assert "2 process(es)" in (out / "log.txt").read_text()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # rank 0 alone writes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_with_c10d_rendezvous(phantom, tmp_path):
    """Scale-out as a user launches it on two machines: one torchrun agent per "node" (both on
    127.0.0.1 here), c10d rendezvous, one process each; both ranks end with identical weights."""
    out, port = tmp_path / "nodes", _free_port()
    agents = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", "medgmae-test", *_command(phantom, out, "--steps", "3")[1:]]
        agents.append(subprocess.Popen(cmd, env=phantom, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True))
    results = [agent.communicate(timeout=600) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    ckpt = torch.load(out / "checkpoint_latest.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 3
    assert "weights identical on all 2 ranks" in (out / "log.txt").read_text()


def test_sigterm_saves_and_resume_finishes(phantom, tmp_path):
    out = tmp_path / "sig"
    proc = subprocess.Popen(_command(phantom, out, "--steps", "500", "--save-every", "1000"), env=phantom, cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err.strip().splitlines()[-1]
    step = torch.load(out / "checkpoint_latest.pt", weights_only=False)["step"]
    assert 3 <= step < 500
    done = subprocess.run(_command(phantom, out, "--steps", str(step + 3), "--resume"), env=phantom, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(out / "checkpoint_final.pt", weights_only=False)["step"] == step + 3
