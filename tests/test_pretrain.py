"""Pretraining: masked loss, crop sampling, schedule, checkpoints, exact resume, the command (fast, 32^3)."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from medgmae_trainers.networks import build_networks, network_config
from medgmae_trainers.pretrain import trainer as trainer_mod
from medgmae_trainers.pretrain.model import PretrainModel, masked_mse, visible_mean_mse
from medgmae_trainers.pretrain.trainer import PretrainSettings, lr_lambda, pretrain
from medgmae_plans.runtime import Interrupted, UserError
from preprocessing.pretrain_sampling import (CropChunks, SamplingConfig, crop_centres, extract_crop,
                                             in_memory_case, iterate_batches)

torch.set_num_threads(1)


def small_model(decoder: str, k: int = 16) -> PretrainModel:
    torch.manual_seed(0)
    enc, dec = build_networks(network_config("tiny", crop_size=32, patch_size=8, num_gaussians=k), decoder)
    return PretrainModel(enc, dec, decoder, mask_ratio=0.75)


def body_volume(shape=(48, 56, 52), seed=0):
    """A bright box ('body') with a labelled blob inside, on air."""
    rng = np.random.default_rng(seed)
    img = np.zeros((1, *shape), np.float32)
    img[0, 6:42, 8:48, 8:44] = 0.45 + 0.05 * rng.random((36, 40, 36))
    img[0, 20:30, 25:35, 20:28] = 0.85
    seg = np.zeros((1, *shape), np.int16)
    seg[0, 20:30, 25:35, 20:28] = 1
    return img, seg


@pytest.mark.parametrize("decoder", ["gaussian", "hierarchical", "voxel"])
def test_loss_ignores_visible_voxels_of_the_target(decoder):
    model = small_model(decoder)
    imgs = torch.rand(2, 1, 32, 32, 32)
    torch.manual_seed(3)
    out = model(imgs)
    visible = ~out["voxel_mask"].unsqueeze(1)
    target = torch.where(visible, torch.rand_like(imgs) * 5, imgs)  # change only the visible voxels
    torch.manual_seed(3)
    out2 = model(imgs, target=target)
    assert torch.equal(out["voxel_mask"], out2["voxel_mask"])
    assert torch.allclose(out["loss"], out2["loss"], rtol=1e-6)
    # ... and it does change when a masked voxel changes.
    target3 = torch.where(~visible, imgs + 0.5, imgs)
    torch.manual_seed(3)
    assert abs(model(imgs, target=target3)["loss"].item() - out["loss"].item()) > 0.01


def test_gaussians_are_rendered_only_on_masked_voxels():
    model = small_model("gaussian")
    out = model(torch.rand(2, 1, 32, 32, 32))
    assert out["voxel_mask"].float().mean().item() == pytest.approx(0.75, abs=0.02)
    assert torch.all(out["pred"][~out["voxel_mask"].unsqueeze(1)] == 0)
    assert out["pred"][out["voxel_mask"].unsqueeze(1)].abs().sum() > 0
    out["loss"].backward()
    assert model.decoder.heads.position.weight.grad.abs().sum() > 0


def test_masked_mse_counts_masked_voxels_only():
    pred, target = torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2)
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    target[0, 0, 1, 1, 1] = 100.0  # visible: ignored
    assert masked_mse(pred, target, mask).item() == 1.0


def test_visible_mean_baseline_of_the_snapshots():
    # Crop 0: visible 0.2, masked 0.5 -> (0.3)^2; crop 1: visible and masked alike -> 0. Mean over masked voxels.
    imgs = torch.full((2, 1, 4, 4, 4), 0.2)
    mask = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    imgs[0, 0, :2] = 0.5
    assert visible_mean_mse(imgs, mask) == pytest.approx(0.09 / 2, abs=1e-6)


def test_quality_benchmark_scores_a_perfect_model_zero_and_the_baseline_above():
    from benchmarks.pretrain_quality import masked_errors

    class Oracle(torch.nn.Module):  # predicts every voxel right, with the pretraining model's mask
        def forward(self, x):
            mask = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)
            mask[:, :, :8] = True
            return {"pred": x.clone(), "voxel_mask": mask}

    crops = torch.rand(3, 1, 8, 16, 16)
    ours, baseline = masked_errors(Oracle(), crops, batch=2)
    assert ours == 0.0 and baseline > 0.05  # uniform noise: variance 1/12 around the visible mean


def test_crop_centres_are_three_positive_to_one_negative():
    img, seg = body_volume()
    rng = np.random.default_rng(0)
    centres, positive = crop_centres(img, seg, {}, SamplingConfig(sub_crops=8), rng)
    assert positive.sum() == 6 and len(centres) == 8
    for c, pos in zip(centres, positive):
        if pos:
            assert seg[(0, *c)] == 1
    # nnU-Net's class_locations ([M, 4], channel first) are used without reading the labels.
    props = {"class_locations": {1: np.array([[0, 25, 30, 24]])}}
    centres, positive = crop_centres(img, None, props, SamplingConfig(sub_crops=4), rng)
    assert [c for c, p in zip(centres, positive) if p] == [(25, 30, 24)] * 3
    # No labels: positives lie on body tissue.
    centres, positive = crop_centres(img, None, {}, SamplingConfig(sub_crops=40), rng)
    assert all(img[(0, *c)] > 0.05 for c, p in zip(centres, positive) if p)
    assert positive.sum() == 30
    # Label-free (--crop-centres body): a labelled case's labels and class locations are not used; its
    # positives are drawn as an unlabelled case's, the same centres from the same generator state.
    body = SamplingConfig(sub_crops=40, crop_centres="body")
    free = crop_centres(img, seg, props, body, np.random.default_rng(5))
    unlabelled = crop_centres(img, None, {}, body, np.random.default_rng(5))
    assert free[0] == unlabelled[0] and (free[1] == unlabelled[1]).all()
    assert all(img[(0, *c)] > 0.05 for c, p in zip(*free) if p)


def test_crops_are_padded_outside_the_volume():
    img = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7) + 1
    crop = extract_crop(img, (0, 0, 0), 8)
    assert crop.shape == (1, 8, 8, 8)
    assert (crop[0, :4, :4, :4] == 0).all()  # before the volume
    assert np.array_equal(crop[0, 4:, 4:, 4:], img[0, :4, :4, :4])
    assert extract_crop(img, (2, 3, 3), 4)[0, 0, 0, 0] == img[0, 0, 1, 1]


def test_data_stream_is_a_function_of_the_step():
    img, seg = body_volume()
    cases = [in_memory_case("a", img, seg), in_memory_case("b", img, None)]
    chunks = CropChunks(cases, SamplingConfig(crop_size=24, sub_crops=4), seed=1)
    first = iterate_batches(chunks, batch_size=3, start_step=0, workers=0)
    batches = [next(first) for _ in range(6)]
    assert batches[0].shape == (3, 1, 24, 24, 24) and batches[0].dtype == torch.float32
    resumed = iterate_batches(chunks, batch_size=3, start_step=3, workers=1)  # other start, a worker
    for expected in batches[3:]:
        assert torch.equal(next(resumed), expected)
    other_rank = iterate_batches(CropChunks(cases, SamplingConfig(crop_size=24, sub_crops=4), seed=1, rank=1),
                                 batch_size=3)
    assert not torch.equal(next(other_rank), batches[0])


def test_warmup_then_cosine():
    f = lr_lambda(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-9)


def settings(out, **kw) -> PretrainSettings:
    base = dict(out=str(out), preset="tiny", decoder="voxel", crop_size=32, patch=8, gaussians=16, steps=8,
                batch_size=2, lr=1e-3, warmup=2, sub_crops=4, save_every=4, png_every=100, log_every=2,
                threads=1, pbar=False, workers=0)
    base.update(kw)
    return PretrainSettings(**base)


def cases():
    img, seg = body_volume()
    return [in_memory_case("a", img, seg), in_memory_case("b", img[:, ::-1].copy(), None)]


def test_short_run_writes_checkpoints_metrics_and_pictures(tmp_path):
    res = pretrain(settings(tmp_path / "run", decoder="gaussian", png_every=4), cases(),
                   {"spacing": [1.5] * 3, "normalisation": {"hu_window": [-175, 250]}})
    run = tmp_path / "run"
    assert res["step"] == 8
    for name in ("checkpoint_latest.pt", "checkpoint_final.pt", "log.txt", "metrics.jsonl", "loss_curve.png",
                 "snapshots/step_0000004.png", "snapshots/step_0000008.png"):
        assert (run / name).is_file(), name
    final = torch.load(run / "checkpoint_final.pt", weights_only=False)
    meta = final["metadata"]
    assert meta["preset"] == "tiny" and meta["decoder_type"] == "gaussian" and meta["step"] == 8
    assert meta["patch_size"] == 8 and meta["crop_size"] == [32, 32, 32] and meta["spacing"] == [1.5] * 3
    assert "normalisation" in meta and meta["encoder_config"]["embed_dim"] == 192
    from medgmae_trainers.networks import ViT3D
    ViT3D(**meta["encoder_config"]).load_state_dict(final["encoder"], strict=True)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8] and all(np.isfinite(r["loss"]) for r in rows)
    with pytest.raises(UserError, match="--resume"):
        pretrain(settings(tmp_path / "run", decoder="gaussian"), cases())
    # --resume on a finished run keeps the final checkpoint as it is and trains nothing.
    before = (run / "checkpoint_final.pt").stat().st_mtime_ns
    again = pretrain(settings(tmp_path / "run", decoder="gaussian", resume=True), cases())
    assert again["step"] == 8 and again["final_loss"] == rows[-1]["loss"]
    assert (run / "checkpoint_final.pt").stat().st_mtime_ns == before
    # The saved model, rebuilt from the checkpoint alone, scores the same as the one that trained.
    from benchmarks.pretrain_quality import masked_errors
    from medgmae_trainers.pretrain.model import load_pretrain_model
    model, meta = load_pretrain_model(run / "checkpoint_final.pt")
    assert meta["step"] == 8 and not model.training
    crops = torch.rand(2, 1, 32, 32, 32)
    twin = small_model("gaussian")
    twin.load_state_dict(final["model"])
    assert masked_errors(model, crops) == masked_errors(twin.eval(), crops)


def test_kept_steps_are_final_checkpoints_of_the_learning_curve(tmp_path):
    """--keep-steps keeps checkpoint_step_<N>.pt in checkpoint_final.pt's format at step N (the weights
    of that step, not the final ones); N must come before the last step."""
    from medgmae_trainers.pretrain.checkpoint import encoder_state, load_checkpoint
    from medgmae_trainers.networks import ViT3D
    from medgmae_trainers.pretrain.trainer import kept_checkpoint

    pretrain(settings(tmp_path / "run", keep_steps=(2, 6)), cases())
    run = tmp_path / "run"
    for step in (2, 6):
        kept = load_checkpoint(kept_checkpoint(run, step), metadata_keys=("encoder_config", "step"))
        assert kept["step"] == step and kept["metadata"]["step"] == step
        encoder, _ = encoder_state(kept, run)
        ViT3D(**kept["metadata"]["encoder_config"]).load_state_dict(encoder, strict=True)
    final = torch.load(run / "checkpoint_final.pt", weights_only=False)["encoder"]
    at6 = torch.load(kept_checkpoint(run, 6), weights_only=False)["encoder"]
    assert final.keys() == at6.keys() and any(not torch.equal(final[k], at6[k]) for k in final)
    assert sorted(p.name for p in run.glob("checkpoint_step_*.pt")) == ["checkpoint_step_0000002.pt",
                                                                       "checkpoint_step_0000006.pt"]
    for bad in ((0,), (8,)):  # the last step's checkpoint is checkpoint_final.pt
        with pytest.raises(UserError, match="--keep-steps"):
            pretrain(settings(tmp_path / f"bad{bad[0]}", keep_steps=bad), cases())


def _params(path):
    return torch.load(path, weights_only=False)["model"]


@pytest.mark.parametrize("decoder,how", [("voxel", "signal"), ("voxel", "crash"), ("gaussian", "crash")])
def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, decoder, how):
    pretrain(settings(tmp_path / "straight", decoder=decoder, save_every=3), cases())
    real = trainer_mod.iterate_batches

    def interrupted(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 4:
                if how == "signal":  # SIGTERM during step 5: the loop saves after it and stops
                    os.kill(os.getpid(), signal.SIGTERM)
                else:  # dies in step 5 without saving (like SIGKILL): latest is from step 3
                    raise RuntimeError("killed")
            yield batch

    monkeypatch.setattr(trainer_mod, "iterate_batches", interrupted)
    if how == "signal":
        with pytest.raises(Interrupted) as stop:
            pretrain(settings(tmp_path / "resumed", decoder=decoder, save_every=3), cases())
        assert stop.value.code == 128 + signal.SIGTERM
        assert torch.load(tmp_path / "resumed" / "checkpoint_latest.pt", weights_only=False)["step"] == 5
    else:
        with pytest.raises(RuntimeError, match="killed"):
            pretrain(settings(tmp_path / "resumed", decoder=decoder, save_every=3), cases())
        assert torch.load(tmp_path / "resumed" / "checkpoint_latest.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(trainer_mod, "iterate_batches", real)
    pretrain(settings(tmp_path / "resumed", decoder=decoder, save_every=3, resume=True), cases())
    a, b = _params(tmp_path / "straight" / "checkpoint_final.pt"), _params(tmp_path / "resumed" / "checkpoint_final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [2, 4, 6, 8]  # rows of the steps redone after the crash are not duplicated


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    img, _ = body_volume()
    img[:] = np.nan
    with pytest.raises(UserError, match="non-finite loss at step 1"):
        pretrain(settings(tmp_path / "nan"), [in_memory_case("nan", img)])


def test_resume_refuses_other_settings(tmp_path):
    pretrain(settings(tmp_path / "run", steps=2), cases())
    with pytest.raises(UserError, match="decoder_type"):
        pretrain(settings(tmp_path / "run", steps=4, decoder="gaussian", resume=True), cases())
    # a run saved before --crop-centres existed was organ-centred: it cannot go on label-free
    latest = tmp_path / "run" / "checkpoint_latest.pt"
    state = torch.load(latest, weights_only=False)
    for block in (state["settings"], state["metadata"]):
        block.pop("crop_centres"), block.pop("label_free", None)
    torch.save(state, latest)
    with pytest.raises(UserError, match="crop_centres"):
        pretrain(settings(tmp_path / "run", steps=4, crop_centres="body", resume=True), cases())


def write_preprocessed(root, name="Dataset990_AbdomenPhantom", n=2):
    """A minimal MedGMAE-preprocessed labelled dataset, written with nnU-Net's own blosc2 writer."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    folder = root / name / "MedGMAEPlans_3d_fullres"
    folder.mkdir(parents=True)
    (root / name / "MedGMAEPlans.json").write_text(json.dumps(
        {"configurations": {"3d_fullres": {"spacing": [1.5, 1.5, 1.5]}}}))
    for i in range(n):
        img, seg = body_volume(seed=i)
        props = {"class_locations": {1: np.argwhere(seg == 1)}}
        nnUNetDatasetBlosc2.save_case(img, seg, props, str(folder / f"case_{i:03d}"))
    return folder


def test_command_on_a_preprocessed_dataset(nnunet_env, tmp_path):
    from medgmae_trainers.pretrain.cli import main

    write_preprocessed(nnunet_env["nnUNet_preprocessed"])
    out = tmp_path / "cli"
    argv = ["-d", "Phantom", "--preset", "tiny", "--decoder", "gaussian", "--gaussians", "8", "--crop-size", "32",
            "--patch", "16", "--steps", "3", "--batch-size", "2", "--workers", "0", "--device", "cpu",
            "--out", str(out), "--no-pbar", "--threads", "1", "--log-every", "1"]
    assert main(argv) == 0
    meta = torch.load(out / "checkpoint_final.pt", weights_only=False)["metadata"]
    assert meta["datasets"] == ["Dataset990_AbdomenPhantom"] and meta["num_cases"] == 2
    assert meta["patch_size"] == 16 and meta["num_gaussians"] == 8
    assert meta["crop_centres"] == "organs" and meta["label_free"] is False  # the paper's sampling, by default
    run = json.loads((out / "pretrain.json").read_text())
    assert run["results"]["step"] == 3
    assert main(argv) == 2  # the run exists and --resume was not given: one-line error
    assert main(["-d", "NoSuchSet", "--out", str(tmp_path / "x")]) == 2
    # images only: the run record says its crops never used the labels
    free = tmp_path / "free"
    assert main([*argv, "--out", str(free), "--crop-centres", "body"]) == 0  # the last --out counts
    meta = torch.load(free / "checkpoint_final.pt", weights_only=False)["metadata"]
    assert meta["crop_centres"] == "body" and meta["label_free"] is True
    assert json.loads((free / "pretrain.json").read_text())["settings"]["crop_centres"] == "body"


def test_command_with_worker_processes_exits(nnunet_env, tmp_path):
    """The process ends once training is done (its data workers once kept it alive forever)."""
    from plan_support import run_module

    write_preprocessed(nnunet_env["nnUNet_preprocessed"])
    out = tmp_path / "workers"
    proc = run_module("medgmae_trainers.pretrain.cli", [
        "-d", "Phantom", "--gaussians", "8", "--crop-size", "96", "--steps", "2", "--batch-size", "2",
        "--workers", "2", "--device", "cpu", "--out", out, "--no-pbar", "--threads", "1"], nnunet_env, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert (out / "checkpoint_final.pt").is_file()


def test_ranks_with_different_weights_are_an_error():
    """The check behind that line: a rank whose weights differ stops the run."""
    from medgmae_trainers.pretrain import distributed

    model = torch.nn.Linear(2, 2)
    info = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    original = distributed.gather_objects
    try:
        distributed.gather_objects = lambda obj, info: [obj, "another digest"]
        with pytest.raises(RuntimeError, match="different weights"):
            distributed.weights_digest(model, info)
        distributed.gather_objects = lambda obj, info: [obj, obj]
        assert len(distributed.weights_digest(model, info)) == 64
    finally:
        distributed.gather_objects = original
