"""Time per pretraining step of the gaussian, hierarchical and voxel decoders (same encoder), and crops/s.

    python -m benchmarks.pretrain [--preset tiny] [--device cpu] [-d Phantom] [--steps 5] [--workers 1]

The three decoders are timed round-robin (one step each, in turn), so load from other processes
falls on all of them alike; the ratios against the voxel-MAE step are what the issue bounds:
gaussian <= 3x voxel on CPU with the tiny preset, <= 1.5x on a GPU with the base preset.
The data figure is the crop loader's throughput (load, 3:1 crop centres, augmentation) with --workers.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from medgmae_trainers.networks import DECODER_TYPES, PRESETS, build_networks, network_config
from medgmae_trainers.pretrain.checkpoint import load_checkpoint
from medgmae_trainers.pretrain.model import PretrainModel
from medgmae_trainers.pretrain.trainer import param_groups
from preprocessing.pretrain_sampling import CropChunks, SamplingConfig, in_memory_case, iterate_batches

LIMITS = {"cpu": 3.0, "cuda": 1.5}


def synthetic_cases(n: int = 2) -> list:
    """Body-like volumes (a bright ellipsoid with organs) for when no preprocessed dataset is named."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in (140, 160, 180)], indexing="ij")
        img = np.where(z ** 2 + (y / 0.8) ** 2 + x ** 2 < 0.8, 0.45, 0.0).astype(np.float32)
        img += np.where((z - 0.2) ** 2 + (y - 0.1) ** 2 + (x + 0.3) ** 2 < 0.05, 0.3, 0.0)
        img += 0.02 * rng.standard_normal(img.shape).astype(np.float32)
        seg = ((z - 0.2) ** 2 + (y - 0.1) ** 2 + (x + 0.3) ** 2 < 0.05).astype(np.int16)
        cases.append(in_memory_case(f"synthetic_{i}", img[None], seg[None]))
    return cases


def load_cases(datasets: list[str]) -> list:
    if not datasets:
        return synthetic_cases()
    from medgmae_plans.runtime.paths import ensure_nnunet_env
    from medgmae_trainers.pretrain.data import pretraining_cases

    ensure_nnunet_env()
    return pretraining_cases(datasets, [])[0]


def time_steps(args, batch: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Mean seconds per optimiser step for each decoder type, measured round-robin."""
    cfg = network_config(args.preset, patch_size=args.patch, crop_size=args.crop_size)
    trained = {}
    for path in args.weights:
        ckpt = load_checkpoint(path)
        trained[ckpt["metadata"]["decoder_type"]] = ckpt["model"]
    runs = {}
    for kind in DECODER_TYPES:
        torch.manual_seed(0)
        encoder, decoder = build_networks(cfg, kind)
        model = PretrainModel(encoder, decoder, kind, render_cutoff=cfg["gaussians"]["render_cutoff"]).to(device)
        if kind in trained:
            # Trained Gaussians are larger than initial ones, and the render cost grows with their volume.
            model.load_state_dict(trained[kind])
        opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
        runs[kind] = (model, opt, [])
    bf16 = device.type == "cuda"

    def step(model, opt):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup + args.steps):
        for kind, (model, opt, times) in runs.items():
            t0 = time.perf_counter()
            step(model, opt)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    return {kind: float(np.median(times)) for kind, (_, _, times) in runs.items()}


def crops_per_second(cases, args) -> float:
    crop = args.crop_size or 96
    chunks = CropChunks(cases, SamplingConfig(crop_size=crop, sub_crops=8), seed=41)
    batches = iterate_batches(chunks, batch_size=8, workers=args.workers)
    next(batches)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(args.loader_batches):
        next(batches)
    return args.loader_batches * 8 / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("-d", "--dataset", action="append", default=[], help="preprocessed dataset for real crops")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--patch", type=int)
    p.add_argument("--crop-size", type=int)
    p.add_argument("--steps", type=int, default=5, help="timed steps per decoder")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loader-batches", type=int, default=6, help="batches of 8 crops timed for crops/s")
    p.add_argument("--weights", action="append", default=[], metavar="CKPT",
                   help="time this decoder type with a run's trained weights (same preset); repeatable")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cases = load_cases(args.dataset)
    rate = crops_per_second(cases, args)
    crop = args.crop_size or 96
    chunks = CropChunks(cases, SamplingConfig(crop_size=crop, sub_crops=8, augment=False), seed=41)
    batch = next(iterate_batches(chunks, args.batch_size)).to(device)
    times = time_steps(args, batch, device)

    print(f"pretraining step, preset {args.preset}, {device.type}, batch {args.batch_size}, crop {crop}^3, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps"
          + (f", trained weights: {', '.join(args.weights)}" if args.weights else ", initial weights"))
    for kind in DECODER_TYPES:
        print(f"  {kind:<13} {times[kind] * 1000:9.1f} ms/step   {times[kind] / times['voxel']:5.2f}x voxel-MAE")
    ratio = times["gaussian"] / times["voxel"]
    limit = LIMITS[device.type]
    print(f"gaussian / voxel = {ratio:.2f} (limit {limit}x on {device.type}): {'OK' if ratio <= limit else 'OVER'}")
    print(f"data loader: {rate:.1f} crops/s ({args.workers} worker(s), crop {crop}^3, "
          f"{'preprocessed ' + ', '.join(args.dataset) if args.dataset else 'synthetic volumes'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ms_per_step": {k: v * 1000 for k, v in times.items()}, "ratio": ratio,
                       "crops_per_s": rate, "settings": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
