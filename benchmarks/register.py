"""Scratch ViTMorph vs MONAI's VoxelMorph vs MedGMAE-pretrained ViTMorph on the phantom registration pairs.

    python -m benchmarks.register [--pretrained CKPT] [--steps 150] [--lr 5e-4] [--feature-size 8] [--out DIR]

Makes (or reuses) `Registration_Phantom` in $nnUNet_raw, trains the three networks with the same
recipe (LNCC + diffusion + Dice, Adam, poly decay, batch 1, seed 41) for the same number of steps,
and registers the *test* pairs (inter-subject, and subjects against known deformations): mean Dice
before/after, % voxels with det(J) <= 0, endpoint error (mm, inside the organs, known-deformation
pairs), seconds per training step, and each run's step time against VoxelMorph's from this run.
The default budget (150 steps, decoder width 8, 6 mm phantom of 32 x 48 x 64) fits a shared
two-core machine; the paper trains for ~500 epochs at 160 x 192 x 224 on a GPU.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medgmae_plans.runtime.paths import nnunet_folder

RUNS = (("scratch", "vit", False), ("voxelmorph", "voxelmorph", False), ("medgmae", "vit", True))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.register", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", type=Path, help="pretraining checkpoint_final.pt (default "
                   "$nnUNet_results/MedGMAE_pretrain/gaussian_tiny_p16/checkpoint_final.pt)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--feature-size", type=int, default=8)
    p.add_argument("--runs", nargs="+", default=[r[0] for r in RUNS], choices=[r[0] for r in RUNS])
    p.add_argument("--out", type=Path, help="folder for the runs (default $nnUNet_results/MedGMAE_register/benchmark)")
    args = p.parse_args(argv)

    from preprocessing.layouts.registration import RegistrationDataset
    from medgmae_trainers.registration.phantom_pairs import build_phantom_pairs
    from medgmae_trainers.registration.trainer import TrainSettings, Volumes, load_trained, train, validate

    pretrained = args.pretrained or (nnunet_folder("nnUNet_results") / "MedGMAE_pretrain" / "gaussian_tiny_p16"
                                     / "checkpoint_final.pt")
    root = build_phantom_pairs(nnunet_folder("nnUNet_raw"), pbar=False)
    ds = RegistrationDataset(root)
    out = args.out or nnunet_folder("nnUNet_results") / "MedGMAE_register" / "benchmark"
    rows = {}
    for name, network, use_pre in RUNS:
        if name not in args.runs:
            continue
        run = out / f"{name}_s{args.steps}"
        if not (run / "checkpoint_final.pt").exists():
            s = TrainSettings(dataset=str(root), network=network, pretrained=str(pretrained) if use_pre else None,
                              feature_size=args.feature_size, steps=args.steps, lr=args.lr, val_every=0,
                              save_every=25, out=str(run), pbar=False)
            train(s, resume=(run / "checkpoint_latest.pt").exists())
        info = json.loads((run / "train.json").read_text())["results"]
        model, _ = load_trained(run, "cpu")
        t0 = time.time()
        test = validate(model, ds, Volumes(ds), ds.pairs("test"), "cpu")
        rows[name] = {**{k: v for k, v in test.items() if k != "pairs"}, "s_per_step": info["s_per_step"],
                      "train_wall_s": info["wall_s"], "register_s_per_pair": (time.time() - t0) / len(ds.pairs("test"))}
    base = rows.get("voxelmorph", {}).get("s_per_step")
    print(f"\nphantom registration, test pairs ({len(ds.pairs('test'))}), {args.steps} steps each, "
          f"decoder width {args.feature_size}, grid {ds.shape} at {ds.spacing[0]:g} mm")
    print("| run | mean Dice before | mean Dice after | % det(J)<=0 | EPE mm before | EPE mm after | s/step | vs VoxelMorph |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = f"{r['s_per_step'] / base:.2f}x" if base else "-"
        print(f"| {name} | {r.get('mean_dice_before', np.nan):.4f} | {r.get('mean_dice', np.nan):.4f} | "
              f"{r.get('nonpos_jacobian_pct', np.nan):.3f} | {r.get('epe_mm_before', np.nan):.2f} | "
              f"{r.get('epe_mm', np.nan):.2f} | {r['s_per_step']:.2f} | {ratio} |")
    (out / "benchmark.json").write_text(json.dumps({"settings": vars(args) | {"pretrained": str(pretrained),
                                                    "out": str(out)}, "results": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
