"""`medgmae_pretrain`: MedGMAE / MedGMAE* / voxel-MAE pretraining, one process or under torchrun.

    medgmae_pretrain -d AMOS [-d FLARE22 ...] [--images NAME ...] [-c 3d_lowres] --preset tiny --decoder gaussian
    torchrun --nproc_per_node 8 -m medgmae_trainers.pretrain.cli -d AMOS --preset paper --device cuda
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from medgmae_plans.runtime import UserError, add_common_flags, check_writable, cli_entry, write_run_json

from medgmae_plans.configurations import CONFIGURATIONS, SUPPORTED_PATCHES, geometry
from renderer_cupy import BACKENDS

from preprocessing.pretrain_sampling import CROP_CENTRES

from ..networks import DECODER_TYPES, PRESETS
from ..run import resolve_device
from .trainer import RECIPES, PretrainSettings, pretrain

DEFAULTS = PretrainSettings(out="")  # the run defaults live there; the flags below default to None ("not given")
# Flags that set the PretrainSettings field of the same name (the rest are set below from other flags).
SETTING_FLAGS = ("configuration", "preset", "decoder", "gaussians", "max_scale", "patch", "crop_size", "mask_ratio", "steps", "batch_size", "lr",
                 "warmup", "seed", "workers", "sub_crops", "crop_centres", "save_every", "png_every", "log_every", "threads",
                 "render_backend")


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="medgmae_pretrain",
        description="Pretrain a 3D ViT encoder with a Gaussian (MedGMAE), hierarchical Gaussian (MedGMAE*) "
                    "or voxel (MAE) masked-autoencoder objective on preprocessed CT. Under torchrun it runs "
                    "DistributedDataParallel (NCCL on GPUs, gloo on CPUs); --batch-size is per process.")
    p.add_argument("-d", "--dataset", action="append", default=[], metavar="NAME",
                   help="preprocessed labelled dataset: id, full name or alias (AMOS, FLARE22, ...); repeatable")
    p.add_argument("--images", action="append", default=[], metavar="NAME",
                   help="preprocessed unlabelled image collection; repeatable")
    p.add_argument("-c", "--configuration", choices=list(CONFIGURATIONS),
                   help=f"which preprocessed data, and its crop and ViT patch: 3d_fullres (1.5 mm, 96^3, patch 16) "
                        f"or 3d_lowres (3 mm, 48^3, patch 8) (default {d.configuration})")
    p.add_argument("--preset", choices=sorted(PRESETS), help=f"network sizes (default {d.preset})")
    p.add_argument("--decoder", choices=DECODER_TYPES, help=f"pretraining objective (default {d.decoder})")
    p.add_argument("--gaussians", type=int, help="number of Gaussians K, >= 1 (preset default: tiny 64, else 512)")
    p.add_argument("--max-scale", type=float,
                   help="largest Gaussian sigma as a fraction of the crop, in (0, 1] (preset default: tiny 0.15, "
                        "else 0.5)")
    p.add_argument("--patch", type=int, choices=SUPPORTED_PATCHES, help="ViT patch size (default: the configuration's)")
    p.add_argument("--crop-size", type=int,
                   help="cubic crop edge in voxels, a positive multiple of the ViT patch (default: the configuration's)")
    p.add_argument("--mask-ratio", type=float, help=f"fraction of patches masked, in (0, 1) exclusive (default {d.mask_ratio:g})")
    recipe = ", ".join(f"{k}: {v['steps']} steps, batch {v['batch_size']}, lr {v['lr']}, warmup {v['warmup']}"
                       for k, v in RECIPES.items())
    p.add_argument("--steps", type=int, help=f"optimiser steps, >= 1 (preset defaults: {recipe})")
    p.add_argument("--batch-size", type=int, help="crops per step per process, >= 1")
    p.add_argument("--lr", type=float, help=f"peak learning rate, > 0 (AdamW, weight decay {d.weight_decay:g})")
    p.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay, >= 0")
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument("--out", help="output folder (default $nnUNet_results/MedGMAE_pretrain/<decoder>_<preset>_p<patch>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint_latest.pt")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--workers", type=int,
                   help=f"background data workers per process, >= 0 (0: main process; default {d.workers})")
    p.add_argument("--sub-crops", type=int, help=f"crops cut from each loaded volume, >= 1 (default {d.sub_crops})")
    p.add_argument("--crop-centres", choices=CROP_CENTRES,
                   help=f"positive crops (3 of 4) centred on labelled organs, the paper's, or on body tissue: "
                        f"body is label-free, the -d datasets' images only (default {d.crop_centres})")
    p.add_argument("--no-augment", action="store_true", help="no flips/rotations/intensity augmentation")
    p.add_argument("--save-every", type=int,
                   help=f"steps between checkpoint_latest.pt saves, >= 1 (default {d.save_every})")
    p.add_argument("--keep-steps", type=int, nargs="+", metavar="N",
                   help="also keep a final-format checkpoint_step_<N>.pt at each step N (1 <= N < --steps): a "
                        "learning curve from one run, read by medgmae_train and medgmae_probe as checkpoint_final.pt")
    p.add_argument("--png-every", type=int, help=f"steps between snapshot PNGs, >= 1 (default {d.png_every})")
    p.add_argument("--log-every", type=int, help=f"steps between metrics.jsonl rows, >= 1 (default {d.log_every})")
    p.add_argument("--threads", type=int, help=f"torch CPU threads per process, >= 1 (default {d.threads})")
    p.add_argument("--render-backend", choices=BACKENDS,
                   help=f"Gaussian renderer (default {d.render_backend})")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast of the forward pass on a CPU with native bf16 (AMX or AVX512-BF16); default "
                        "float32 on a CPU (measured no faster for the tiny preset), bf16 autocast on CUDA")
    return add_common_flags(p)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not args.dataset and not args.images:
        raise UserError("give at least one -d DATASET or --images COLLECTION to pretrain on")
    from medgmae_plans.runtime.paths import ensure_nnunet_env

    from .data import pretraining_cases

    given = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}
    if args.keep_steps:
        given["keep_steps"] = tuple(sorted(set(args.keep_steps)))
    checked = replace(DEFAULTS, **given).resolved().check()  # every range, before data is read or a file written
    folders = ensure_nnunet_env()
    geo = geometry(checked.configuration)
    name = f"{checked.decoder}_{checked.preset}_p{checked.patch or geo.vit_patch}"
    if geo.name != DEFAULTS.configuration:
        name += f"_{geo.name}"
    out = check_writable(args.out or folders["nnUNet_results"] / "MedGMAE_pretrain" / name)
    cases, metadata = pretraining_cases(args.dataset, args.images, args.configuration or DEFAULTS.configuration)
    if args.no_augment:
        given["augment"] = False
    if args.cpu_bf16:
        given["cpu_bf16"] = True
    if args.no_pbar:
        given["pbar"] = False
    if args.resume:
        given["resume"] = True
    settings = replace(DEFAULTS, **given, device=resolve_device(args.device).type,
                       datasets=metadata.get("datasets", []), images=metadata.get("image_collections", []))
    settings.out = str(out)
    if int(os.environ.get("RANK", "0")) == 0:  # one writer per run folder (the other ranks are this run's)
        from medgmae_plans.runtime.locks import hold_folder

        hold_folder(out, "medgmae_pretrain run")
    results = pretrain(settings, cases, metadata)  # a signal: `Interrupted`, exit 128 + signum (cli_entry)
    if int(os.environ.get("RANK", "0")) == 0:
        write_run_json(Path(settings.out), "pretrain", vars(settings), results)
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
