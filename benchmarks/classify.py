"""Scratch vs MedGMAE-pretrained classification on the findings phantom, at training fractions 0.1 and 1.0.

    python -m benchmarks.classify [--pretrained CKPT] [--train 48] [--valid 24] [--epochs 8]
                                  [--spacing-xyz 3 3 6] [--size-xyz 96 96 48] [--out DIR]

Makes (or reuses) `Dataset991_PhantomFindings` in $nnUNet_raw, preprocesses it once, trains the four
runs with the same recipe and seed, and prints macro AUROC on the validation cases with its bootstrap
95% interval, the wall time of each run, and pretrained minus scratch per fraction. The default
geometry is coarser than the paper's 1.5 x 1.5 x 3 mm / 192 x 192 x 96 so that the four runs fit a
shared two-core machine; pass `--spacing-xyz 1.5 1.5 3 --size-xyz 192 192 96` on a GPU.
The encoder is the `tiny` preset's (what the default checkpoint was pretrained with).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medgmae_plans.runtime.paths import nnunet_folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.classify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", type=Path, help="pretraining checkpoint_final.pt "
                   "(default $nnUNet_results/MedGMAE_pretrain/gaussian_tiny_p16/checkpoint_final.pt)")
    p.add_argument("--train", type=int, default=48)
    p.add_argument("--valid", type=int, default=24)
    p.add_argument("--prevalence", type=float, default=0.4)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--spacing-xyz", type=float, nargs=3, default=[3.0, 3.0, 6.0])
    p.add_argument("--size-xyz", type=int, nargs=3, default=[96, 96, 48])
    p.add_argument("--device", default="auto")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--val-every", type=int, default=4)
    p.add_argument("-np", "--workers", type=int, default=2, help="processes for the phantom and preprocessing")
    p.add_argument("--out", type=Path, help="runs go here (default $nnUNet_results/MedGMAE_classify/benchmark)")
    args = p.parse_args(argv)

    import torch

    from medgmae_trainers.classification.data import Geometry, ensure_preprocessed, preprocessed_folder
    from preprocessing.layouts.classification import read_labels
    from medgmae_trainers.classification.trainer import TrainSettings, train
    from preprocessing.phantom import generate_dataset

    raw, pre, results = (nnunet_folder(v) for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
    ckpt = args.pretrained or results / "MedGMAE_pretrain" / "gaussian_tiny_p16" / "checkpoint_final.pt"
    if not ckpt.is_file():
        raise SystemExit(f"pretrained checkpoint {ckpt} does not exist; run medgmae_pretrain --preset tiny first "
                         "or pass --pretrained")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    t0 = time.time()
    folder = generate_dataset(raw, n_train=args.train, n_test=args.valid, dataset_id=991, findings=args.prevalence,
                              workers=args.workers, pbar=False)
    table = read_labels(folder / "classification_labels.csv")
    geometry = Geometry(tuple(reversed(args.spacing_xyz)), tuple(reversed(args.size_xyz)))
    cases = ensure_preprocessed(folder, preprocessed_folder(pre, folder.name, geometry), table, geometry,
                                workers=args.workers, pbar=False)
    print(f"data: {len(table.subset('train').cases)} train / {len(table.subset('valid').cases)} valid cases, "
          f"{len(table.classes)} findings, ready in {time.time() - t0:.0f} s; geometry {geometry.tag()}; {device}")
    out_root = args.out or results / "MedGMAE_classify" / "benchmark"
    rows = []
    for fraction in args.fractions:
        for init in ("scratch", "pretrained"):
            out = out_root / f"{init}_f{fraction:g}"
            s = TrainSettings(dataset=folder.name, pretrained=str(ckpt.resolve()) if init == "pretrained" else None,
                              preset="tiny", fraction=fraction, epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, warmup_epochs=1.0, device=device, val_every=args.val_every,
                              n_boot=args.bootstrap, geometry=geometry.to_json(), out=str(out), pbar=False)
            latest = out / "checkpoint_latest.pt"
            start = time.time()
            r = train(s, table, cases, resume=latest.exists())
            rows.append({"init": init, "fraction": fraction, "train_cases": r["train_cases"],
                         "macro_auroc": r["val_macro_auroc"], "ci": r["val_macro_ci"], "auroc": r["val_auroc"],
                         "seconds": round(time.time() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(_table(rows, table.classes))
    (out_root / "benchmark.json").write_text(json.dumps({"settings": vars(args) | {"pretrained": str(ckpt)},
                                                         "rows": rows}, indent=2, default=str))
    return 0


def _table(rows, classes) -> str:
    lines = ["| init | fraction | train cases | macro AUROC (valid) | 95% CI | time |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        lo, hi = r["ci"]
        lines.append(f"| {r['init']} | {r['fraction']:g} | {r['train_cases']} | {r['macro_auroc']:.3f} | "
                     f"{lo:.3f}-{hi:.3f} | {r['seconds']:.0f} s |")
    by = {(r["init"], r["fraction"]): r["macro_auroc"] for r in rows}
    for f in sorted({r["fraction"] for r in rows}):
        if ("scratch", f) in by and ("pretrained", f) in by:
            lines.append(f"\nfraction {f:g}: pretrained - scratch = {by[('pretrained', f)] - by[('scratch', f)]:+.3f} macro AUROC")
    lines.append("\n| finding | " + " | ".join(f"{r['init']} {r['fraction']:g}" for r in rows) + " |")
    lines.append("| --- |" + " ---: |" * len(rows))
    for c in classes:
        vals = [r["auroc"].get(c) for r in rows]
        lines.append(f"| {c} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
