"""The experiment's budget: defaults, `--quick`, and the command line (see the package docstring)."""
from __future__ import annotations

import argparse
from pathlib import Path

from medgmae_plans import cpu_recipe as recipe
from medgmae_plans.runtime import UserError, add_common_flags

DEFAULTS = dict(cases=recipe.PHANTOM_CASES, test_cases=10, unlabeled=200, seeds=5, replicates=3,
                pretrain_steps=12_000, keep_steps=(1_000, 4_000), pretrain_warmup=None,
                epochs=15, iters_per_epoch=recipe.ITERS_PER_EPOCH, probe_samples=1_000, nnunet_replicates=1)
QUICK = dict(cases=6, test_cases=2, unlabeled=4, seeds=2, replicates=2, pretrain_steps=20, keep_steps=(10,),
             pretrain_warmup=5, epochs=1, iters_per_epoch=3, probe_samples=200, nnunet_replicates=1)
# Why the default fine-tuning budget (chosen on fold 0's validation cases, before the experiment ran).
FINETUNE_BUDGET_NOTE = (
    "15 x 50 iterations. The issue asks for a budget where scratch at 100 % clearly beats scratch at 10 %. A "
    "pilot (2026-12-07, scratch, seed 41, 40 x 50 iterations, one thread a run, two side by side) measured on "
    "fold 0's 4 validation cases a mean Dice over the 8 endpoint organs of 41.3 % at 10 % and 38.2 % at 100 % "
    "(15 organs: 25.5 % and 20.4 %): even 2000 iterations (36 min a run) are limited by compute, not labels, so "
    "no budget within the experiment's 3 hours separates them. 750 iterations learn the organs beyond the liver "
    "(the pilot's pseudo Dice: stomach, aorta, kidney by epoch 15) and keep the experiment near 3 h; gate G2 "
    "then says on the test cases, over 3 seeds, whether the data tests label efficiency at this budget.")
SEED = 41  # replicate k's pretraining, fine-tuning, probe and random-init seed is SEED + k


def parse_args(argv) -> argparse.Namespace:
    from . import __doc__ as doc

    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="benchmark folder (default ./medgmae_benchmarks/transfer, "
                   "or ./medgmae_benchmarks/transfer_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny budget to check the orchestration: "
                   + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items() if v is not None))
    p.add_argument("--cases", type=int, help=f"labelled phantom cases, >= 5 (default {DEFAULTS['cases']})")
    p.add_argument("--test-cases", type=int, help=f"held-out test cases, >= 1 (default {DEFAULTS['test_cases']})")
    p.add_argument("--unlabeled", type=int, help=f"unlabelled phantom cases, >= 0 (default {DEFAULTS['unlabeled']})")
    p.add_argument("--seeds", type=int, help=f"pretraining seeds per objective (probed), >= 1 (default {DEFAULTS['seeds']})")
    p.add_argument("--replicates", type=int, help="fine-tuning replicates per arm, >= 1 and <= --seeds "
                   f"(default {DEFAULTS['replicates']})")
    p.add_argument("--nnunet-replicates", type=int, help="replicates of nnU-Net's CNN row, >= 0 and <= --replicates "
                   f"(default {DEFAULTS['nnunet_replicates']})")
    p.add_argument("--pretrain-steps", type=int, help=f"steps of each pretraining, >= 1 (default {DEFAULTS['pretrain_steps']})")
    p.add_argument("--keep-steps", type=int, nargs="*",
                   help=f"earlier steps probed too (default {' '.join(map(str, DEFAULTS['keep_steps']))})")
    p.add_argument("--pretrain-warmup", type=int, help="pretraining warmup steps (default: the tiny preset's 50)")
    p.add_argument("--epochs", type=int, help=f"fine-tuning epochs, >= 1 (default {DEFAULTS['epochs']})")
    p.add_argument("--iters-per-epoch", type=int,
                   help=f"fine-tuning iterations per epoch, >= 1 (default {DEFAULTS['iters_per_epoch']})")
    p.add_argument("--probe-samples", type=int,
                   help=f"the probe's training voxels per class, >= 1 (default {DEFAULTS['probe_samples']})")
    p.add_argument("--fold", default="0", help="cross-validation fold of every run (default 0)")
    p.add_argument("--nsd", action="store_true", help="also compute surface Dice at 1 mm (slow on poor predictions)")
    p.add_argument("-np", "--workers", type=int, default=2,
                   help="processes for phantom, preprocessing and the final evaluation, >= 1 (default 2)")
    add_common_flags(p)
    args = p.parse_args(argv)
    budget = QUICK if args.quick else DEFAULTS
    for key, value in budget.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.keep_steps = tuple(sorted(set(args.keep_steps)))
    if args.root is None:
        args.root = Path("medgmae_benchmarks") / ("transfer_quick" if args.quick else "transfer")
    args.root = args.root.resolve()
    _check(args)
    return args


def _check(args) -> None:
    for key in ("cases", "test_cases", "seeds", "replicates", "pretrain_steps", "epochs", "iters_per_epoch",
                "probe_samples", "workers"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.unlabeled < 0:
        raise UserError("--unlabeled must be at least 0")
    if args.cases < 5:
        raise UserError("--cases must be at least 5 (nnU-Net's five folds)")
    if args.replicates > args.seeds:
        raise UserError(f"--replicates {args.replicates}: at most --seeds {args.seeds} (replicate k fine-tunes seed k's "
                        "checkpoints)")
    if not 0 <= args.nnunet_replicates <= args.replicates:
        raise UserError(f"--nnunet-replicates {args.nnunet_replicates}: must be in [0, --replicates]")
    bad = [s for s in args.keep_steps if not 0 < s < args.pretrain_steps]
    if bad:
        raise UserError(f"--keep-steps {bad}: each must be in [1, --pretrain-steps) (the last is the final checkpoint)")


def settings_of(args) -> dict:
    keys = ("root", "quick", "cases", "test_cases", "unlabeled", "seeds", "replicates", "nnunet_replicates",
            "pretrain_steps", "keep_steps", "pretrain_warmup", "epochs", "iters_per_epoch", "probe_samples", "fold",
            "nsd", "workers")
    return {**{k: getattr(args, k) for k in keys}, "seed": SEED, "preset": recipe.PRESET,
            "configuration": recipe.CONFIGURATION, "unetr_lr": recipe.UNETR_LR,
            "threads_per_run": recipe.THREADS_PER_RUN}
