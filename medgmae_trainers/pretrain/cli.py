"""`medgmae_pretrain`: MedGMAE / MedGMAE* / voxel-MAE pretraining, one process or under torchrun.

    medgmae_pretrain -d AMOS [-d FLARE22 ...] [--images NAME ...] --preset tiny --decoder gaussian
    torchrun --nproc_per_node 8 -m medgmae_trainers.pretrain.cli -d AMOS --preset paper --device cuda
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from medgmae_plans.runtime import UserError, add_common_flags, cli_entry, write_run_json

from ..networks import DECODER_TYPES, PRESETS
from .trainer import RECIPES, Interrupted, PretrainSettings, pretrain


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medgmae_pretrain",
        description="Pretrain a 3D ViT encoder with a Gaussian (MedGMAE), hierarchical Gaussian (MedGMAE*) "
                    "or voxel (MAE) masked-autoencoder objective on preprocessed CT. Under torchrun it runs "
                    "DistributedDataParallel (NCCL on GPUs, gloo on CPUs); --batch-size is per process.")
    p.add_argument("-d", "--dataset", action="append", default=[], metavar="NAME",
                   help="preprocessed labelled dataset: id, full name or alias (AMOS, FLARE22, ...); repeatable")
    p.add_argument("--images", action="append", default=[], metavar="NAME",
                   help="preprocessed unlabelled image collection; repeatable")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--decoder", choices=DECODER_TYPES, default="gaussian")
    p.add_argument("--gaussians", type=int, help="number of Gaussians K (preset default: tiny 64, else 512)")
    p.add_argument("--patch", type=int, choices=(12, 16), help="ViT patch size (preset default 16)")
    p.add_argument("--crop-size", type=int, help="cubic crop edge in voxels (default 96; a multiple of the patch)")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    recipe = ", ".join(f"{k}: {v['steps']} steps, batch {v['batch_size']}, lr {v['lr']}, warmup {v['warmup']}"
                       for k, v in RECIPES.items())
    p.add_argument("--steps", type=int, help=f"optimiser steps (preset defaults: {recipe})")
    p.add_argument("--batch-size", type=int, help="crops per step per process")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW, weight decay 0.05)")
    p.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay")
    p.add_argument("--seed", type=int, default=41)
    p.add_argument("--out", help="output folder (default $nnUNet_results/MedGMAE_pretrain/<decoder>_<preset>_p<patch>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint_latest.pt")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--workers", type=int, default=2, help="background data workers per process (0: main process)")
    p.add_argument("--sub-crops", type=int, default=8, help="crops cut from each loaded volume")
    p.add_argument("--no-augment", action="store_true", help="no flips/rotations/intensity augmentation")
    p.add_argument("--save-every", type=int, default=250, help="steps between checkpoint_latest.pt saves")
    p.add_argument("--png-every", type=int, default=250, help="steps between snapshot PNGs")
    p.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl rows")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--render-backend", choices=("auto", "cupy", "cpu", "torch"), default="auto")
    return add_common_flags(p)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not args.dataset and not args.images:
        raise UserError("give at least one -d DATASET or --images COLLECTION to pretrain on")
    import torch

    from medgmae_plans.paths import ensure_nnunet_env

    from .data import pretraining_cases

    folders = ensure_nnunet_env()
    cases, metadata = pretraining_cases(args.dataset, args.images)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    patch = args.patch or PRESETS[args.preset]["encoder"]["patch_size"]
    out = args.out or str(folders["nnUNet_results"] / "MedGMAE_pretrain" / f"{args.decoder}_{args.preset}_p{patch}")
    settings = PretrainSettings(
        out=out, preset=args.preset, decoder=args.decoder, gaussians=args.gaussians, patch=args.patch,
        crop_size=args.crop_size, mask_ratio=args.mask_ratio, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, warmup=args.warmup, seed=args.seed, device=device, workers=args.workers,
        sub_crops=args.sub_crops, augment=not args.no_augment, resume=args.resume, save_every=args.save_every,
        png_every=args.png_every, log_every=args.log_every, render_backend=args.render_backend,
        threads=args.threads, pbar=not args.no_pbar, datasets=metadata.get("datasets", []),
        images=metadata.get("image_collections", []))
    try:
        results = pretrain(settings, cases, metadata)
    except Interrupted as stop:
        print(f"medgmae_pretrain: {stop}", file=sys.stderr)
        return stop.code
    if int(os.environ.get("RANK", "0")) == 0:
        write_run_json(Path(out), "pretrain", vars(settings), results)
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
