"""The phantom's Table 1: scratch vs voxel-MAE vs MedGMAE fine-tuning at fractions 0.1 and 1.0 (slow, not in CI).

    python -m benchmarks.transfer [--root DIR] [--pretrain-steps 3600] [--epochs 15] [--iters-per-epoch 10]
                                  [--fractions 0.1 1.0] [--replicates 3] [--inits scratch voxelmae medgmae]
                                  [--nsd] [--quick]

It runs the toolkit's console commands as subprocesses, exactly as a user would, in its own nnU-Net
folders `<root>/nnUNet_{raw,preprocessed,results}`:
1. `medgmae_make_phantom -n 20 --unlabeled 8`, `medgmae_plan_and_preprocess -d Phantom` and the
   unlabelled collection `PhantomUnlabeled`;
2. `medgmae_pretrain --preset tiny` per pretrained init (`--decoder voxel` for voxel-MAE, `gaussian`
   for MedGMAE, `hierarchical` for MedGMAE*) and per replicate's pretraining seed (`--seed` + k for
   replicate k; the same steps and seeds for every decoder), with `--resume`;
3. `medgmae_train Phantom 3d_fullres --patch-size 64 --continue` for each init x fraction x replicate
   (fold 0): `--replicates` (3) replicates at each fraction below 1, one at 1.0 (the ceiling).
   Replicate k is the trainer tagged `r<k>` (`medgmae_evaluate`'s replicate convention), fine-tuned
   from the checkpoint of pretraining seed `--seed` + k; its fine-tuning draws (weights of the new
   layers, batches, augmentation) are nnU-Net's own, unseeded, so they differ between replicates too;
4. `medgmae_evaluate Phantom --compare --no-nsd -o <root>/report` (Dice, as in Table 1, mean ± sd over
   replicates and each pretrained init's paired bootstrap interval against scratch; `--nsd` adds
   surface Dice, which on these short runs' scattered predictions costs minutes per case).
Every command reuses what a previous run finished, so after a crash or Ctrl-C the same command line
resumes. Changing a budget option for runs that exist is refused by the commands themselves (or, for
pretraining, extends the run); use another `--root` for another budget.

At the end it prints the Markdown table, the wall time of every step, and the time of MedGMAE's
pretraining against voxel-MAE's and of pretrained fine-tuning against scratch, with their ratios.
`<root>/report/` holds `table1.md` (and the rest of `medgmae_evaluate --compare`'s outputs),
`transfer.log`, and `transfer.json` (settings, step timings, the table), rewritten after every step.

Budget. Before replicates (one per init and fraction), the defaults ran in 50 min (3009 s) on two
otherwise idle CPU cores (2026-11-24): data
169 s (phantom 46 s, preprocessing 100 s + 23 s), pretraining 395 s voxel-MAE and 473 s MedGMAE
(3600 steps each, the tiny recipe), six fine-tuning runs of 15 x 10 batch-2 iterations at 64^3,
313-357 s each including nnU-Net's start-up and the validation of fold 0's 4 cases, evaluation 18 s.
At that budget every mean Dice stays below 2 %: it shows the comparison running end to end, not
which initialisation transfers better. Raise --epochs for that (each 10 more epochs add about 2.5
min per run); a loaded machine is 2-10x slower. Three replicates at 0.1 add two pretrainings per
decoder and six fine-tuning runs to that list: about 2 h at the same budget by those step times, not
yet measured.

`--quick` (6 training cases, 2 unlabelled, 50 pretraining steps, 1 epoch x 3 iterations, 2 replicates,
root `./medgmae_benchmarks/transfer_quick`) checks the orchestration in minutes; its table means nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medgmae_plans.configurations import DEFAULT_CONFIGURATION, PLANS_NAME
from medgmae_plans.constants import INIT_BY_DECODER
from medgmae_plans.runtime import UserError, add_common_flags, cli_entry, setup_run_log, write_run_json

from evaluation.folders import REPLICATE_TAG

# Fine-tuning init name (trainer names, evaluate's rows) -> the pretraining decoder that makes it.
DECODERS = {init: decoder for decoder, init in INIT_BY_DECODER.items()}
INITS = ("scratch", *DECODERS)
DEFAULTS = dict(cases=20, unlabeled=8, pretrain_steps=3600, pretrain_warmup=None, epochs=15, iters_per_epoch=10,
                replicates=3)
QUICK = dict(cases=6, unlabeled=2, pretrain_steps=50, pretrain_warmup=5, epochs=1, iters_per_epoch=3, replicates=2)
PRESET = "tiny"
PATCH_SIZE = 64  # a 64^3 UNETR step is ~3x cheaper than 96^3 on CPU (docs/results.md, docs/commands/medgmae_train.md)
PLANS, CONFIGURATION = PLANS_NAME, DEFAULT_CONFIGURATION


@dataclass
class Step:
    """One console command; `done` says whether a previous run already wrote its output (the commands
    themselves decide what to reuse: finished pretraining and fine-tuning runs are kept as they are)."""
    name: str
    argv: list[str]
    done: Callable[[], bool] = lambda: False
    kind: str = "data"
    init: str | None = None
    replicate: int | None = None
    seconds: float | None = None
    existed: bool = False


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="benchmark folder (default ./medgmae_benchmarks/transfer, "
                   "or ./medgmae_benchmarks/transfer_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny budget to check the orchestration: "
                   + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items() if v is not None))
    p.add_argument("--cases", type=int, help=f"labelled phantom cases (default {DEFAULTS['cases']})")
    p.add_argument("--unlabeled", type=int, help=f"unlabelled phantom images (default {DEFAULTS['unlabeled']})")
    p.add_argument("--pretrain-steps", type=int,
                   help=f"steps of each pretraining (default {DEFAULTS['pretrain_steps']})")
    p.add_argument("--pretrain-warmup", type=int, help="pretraining warmup steps (default: the tiny preset's 50)")
    p.add_argument("--seed", type=int, default=41, help="pretraining seed of replicate 0, the same for every "
                   "decoder; replicate k's is seed + k (default 41)")
    p.add_argument("--epochs", type=int, help=f"fine-tuning epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--iters-per-epoch", type=int,
                   help=f"fine-tuning iterations per epoch (default {DEFAULTS['iters_per_epoch']})")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--replicates", type=int, help=f"replicates of every init at each fraction below 1, each a "
                   f"pretraining seed and a fine-tuning run; 1.0 gets one (default {DEFAULTS['replicates']})")
    p.add_argument("--inits", nargs="+", default=["scratch", "voxelmae", "medgmae"], choices=INITS)
    p.add_argument("--fold", default="0", help="cross-validation fold of every fine-tuning run (default 0)")
    p.add_argument("--nsd", action="store_true", help="also compute surface Dice at 1 mm (slow on poor predictions)")
    p.add_argument("-np", "--workers", type=int, default=2, help="processes for phantom, preprocessing, evaluation")
    add_common_flags(p)
    args = p.parse_args(argv)
    budget = QUICK if args.quick else DEFAULTS
    for key, value in budget.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.root is None:
        args.root = Path("medgmae_benchmarks") / ("transfer_quick" if args.quick else "transfer")
    args.root = args.root.resolve()
    for key in ("cases", "pretrain_steps", "epochs", "iters_per_epoch", "replicates"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.cases < 5:
        raise UserError("--cases must be at least 5 (nnU-Net's five folds)")
    if not all(0 < f <= 1 for f in args.fractions):
        raise UserError(f"--fractions {args.fractions}: each must be in (0, 1]")
    return args


def command(name: str) -> str:
    """The console script beside this interpreter (the toolkit's .venv/bin), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if not found:
        raise UserError(f"{local}: console command {name} not found; install the toolkit (python3 run.py setup)")
    return found


def benchmark_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(root / var)
    env.setdefault("nnUNet_compile", "f")  # torch.compile costs more than it saves in short CPU runs
    return env


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pretrain_folder(root: Path, decoder: str, seed: int) -> Path:
    return root / "nnUNet_results" / "MedGMAE_pretrain" / f"{decoder}_{PRESET}_s{seed}"


def replicates_at(fraction: float, replicates: int) -> range:
    """Replicate indices at a fraction: `replicates` below 1.0, one at 1.0 (the ceiling, all labels)."""
    return range(replicates if fraction < 1.0 else 1)


def trainer_of(init: str, fraction: float, replicate: int) -> str:
    """medgmae_train's trainer_name() with the replicate's tag; spelled out here because its module
    imports nnU-Net."""
    from medgmae_trainers.finetune.fractions import fraction_tag

    return f"MedGMAETrainer_{init}_{fraction_tag(fraction)}_{REPLICATE_TAG.format(replicate)}"


def finetune_folder(root: Path, dataset: str, init: str, fraction: float, fold: str, replicate: int) -> Path:
    from medgmae_trainers.finetune.run_record import fold_folder

    return fold_folder(root / "nnUNet_results", dataset, trainer_of(init, fraction, replicate), PLANS,
                       CONFIGURATION, fold)


def build_steps(args, report: Path) -> list[Step]:
    from preprocessing.phantom import DATASET_NAME, DEFAULT_DATASET_ID

    from medgmae_trainers.finetune.run_record import read_record

    root, common = args.root, (["--no-pbar"] if args.no_pbar else []) + (["--verbose"] if args.verbose else [])
    dataset = f"Dataset{DEFAULT_DATASET_ID:03d}_{DATASET_NAME}"
    raw = root / "nnUNet_raw" / dataset
    pre = root / "nnUNet_preprocessed"
    np_ = ["-np", str(args.workers)]
    steps = [
        Step("phantom", [command("medgmae_make_phantom"), "-n", str(args.cases), "--unlabeled", str(args.unlabeled),
                         "--preview", str(report / "phantom_preview.png"), *np_, *common],
             done=lambda: (raw / "dataset.json").is_file()),
        Step("preprocess Phantom", [command("medgmae_plan_and_preprocess"), "-d", "Phantom", *np_, *common],
             done=lambda: (pre / dataset / f"{PLANS}.json").is_file()),
    ]
    pretrain_args = []
    if args.unlabeled:
        steps.append(Step("preprocess PhantomUnlabeled",
                          [command("medgmae_plan_and_preprocess"), "--images", str(raw / "imagesUnlabeled"),
                           "--name", "PhantomUnlabeled", *np_, *common],
                          done=lambda: (pre / "Collection_PhantomUnlabeled" / f"{PLANS}.json").is_file()))
        pretrain_args = ["--images", "PhantomUnlabeled"]

    # one pretraining per (pretrained init, replicate seed) that some fine-tuning run uses
    replicates = range(max(len(replicates_at(f, args.replicates)) for f in args.fractions))
    checkpoints = {}
    warmup = ["--warmup", str(args.pretrain_warmup)] if args.pretrain_warmup is not None else []
    for init in args.inits:
        if init == "scratch":
            continue
        decoder = DECODERS[init]
        for replicate in replicates:
            seed = args.seed + replicate
            out = pretrain_folder(root, decoder, seed)
            checkpoints[init, replicate] = out / "checkpoint_final.pt"

            def finished(out=out, ckpt=checkpoints[init, replicate]):
                record = _read_json(out / "pretrain.json") or {}
                return ckpt.is_file() and (record.get("results") or {}).get("step", 0) >= args.pretrain_steps

            steps.append(Step(f"pretrain {decoder} s{seed}", [
                command("medgmae_pretrain"), "-d", "Phantom", *pretrain_args, "--preset", PRESET, "--decoder",
                decoder, "--steps", str(args.pretrain_steps), *warmup, "--seed", str(seed), "--out", str(out),
                "--resume", *common], done=finished, kind="pretrain", init=init, replicate=replicate))

    budget = ["--patch-size", str(PATCH_SIZE), "--epochs", str(args.epochs), "--iters-per-epoch",
              str(args.iters_per_epoch), "--fold", str(args.fold)]
    for fraction in args.fractions:
        for replicate in replicates_at(fraction, args.replicates):
            for init in args.inits:
                source = ["--init", "scratch", "--preset", PRESET] if init == "scratch" else \
                    ["--pretrained", str(checkpoints[init, replicate])]
                folder = finetune_folder(root, dataset, init, fraction, args.fold, replicate)

                def finished(folder=folder):
                    record = read_record(folder)
                    return record is not None and record.status == "finished"

                steps.append(Step(f"finetune {init} f{fraction:g} {REPLICATE_TAG.format(replicate)}", [
                    command("medgmae_train"), "Phantom", CONFIGURATION, *source, "--fraction", f"{fraction:g}",
                    "--trainer", trainer_of(init, fraction, replicate), *budget, "--continue", *common],
                    done=finished, kind="finetune", init=init, replicate=replicate))

    nsd = [] if args.nsd else ["--no-nsd"]
    steps.append(Step("evaluate", [command("medgmae_evaluate"), "Phantom", "--compare", *nsd, "-o", str(report),
                                   *np_, *common], kind="evaluate"))
    return steps


def settings_of(args) -> dict:
    keys = ("root", "quick", "cases", "unlabeled", "pretrain_steps", "pretrain_warmup", "seed", "epochs",
            "iters_per_epoch", "fractions", "replicates", "inits", "fold", "nsd", "workers")
    return {**{k: getattr(args, k) for k in keys}, "preset": PRESET, "patch_size": PATCH_SIZE}


def timings_of(steps: list[Step]) -> list[dict]:
    return [{"step": s.name, "seconds": s.seconds, "output_existed": s.existed, "command": " ".join(s.argv)}
            for s in steps if s.seconds is not None]


def comparisons(steps: list[Step]) -> list[str]:
    """Ours against the baseline measured in this run, summed over replicates: MedGMAE vs voxel-MAE
    pretraining, pretrained vs scratch fine-tuning."""
    totals: dict[tuple[str, str], float] = {}
    for s in steps:
        if s.seconds is not None and not s.existed and s.kind in ("pretrain", "finetune"):
            totals[s.kind, s.init] = totals.get((s.kind, s.init), 0.0) + s.seconds
    lines = []
    gauss, voxel = totals.get(("pretrain", "medgmae")), totals.get(("pretrain", "voxelmae"))
    if gauss and voxel:
        lines.append(f"pretraining: MedGMAE {gauss:.0f} s, voxel-MAE {voxel:.0f} s, ratio {gauss / voxel:.2f}")
    scratch = totals.get(("finetune", "scratch"))
    for (kind, init), seconds in totals.items():
        if kind == "finetune" and init != "scratch" and scratch:
            lines.append(f"fine-tuning: {init} {seconds:.0f} s, scratch {scratch:.0f} s, "
                         f"ratio {seconds / scratch:.2f}")
    return lines


def _show(argv: list[str]) -> str:
    return " ".join([Path(argv[0]).name, *argv[1:]])


def _main(argv) -> int:
    args = parse_args(argv)
    report = args.root / "report"
    report.mkdir(parents=True, exist_ok=True)
    log = setup_run_log(report, "transfer", args.verbose)
    env = benchmark_env(args.root)
    steps = build_steps(args, report)
    log.info(f"transfer benchmark in {args.root}: {len(steps)} steps, "
             f"settings {json.dumps(settings_of(args), default=str)}")

    def save(status: str, table: str | None = None) -> None:
        write_run_json(report, "transfer", settings_of(args),
                       {"status": status, "timings": timings_of(steps), "comparisons": comparisons(steps),
                        "total_s": sum(s.seconds or 0.0 for s in steps), "table1_md": table})

    for i, step in enumerate(steps, 1):
        step.existed = step.done()
        note = " (its output exists from a previous run)" if step.existed else ""
        log.info(f"[{i}/{len(steps)}] {step.name}{note}")
        log.info(f"$ {_show(step.argv)}")
        t0 = time.time()
        code = subprocess.run(step.argv, env=env, cwd=args.root).returncode
        step.seconds = time.time() - t0
        if code:
            save(f"failed at step {step.name}")
            raise UserError(f"step '{step.name}' failed with exit code {code} (its output is above); "
                            "run the same command again to resume")
        log.info(f"[{i}/{len(steps)}] {step.name} done in {step.seconds:.0f} s")
        save("running")

    table_path = report / "table1.md"
    table = table_path.read_text() if table_path.is_file() else None
    save("finished", table)
    print("\n" + (table.strip() if table else f"(no {table_path}: no finished fine-tuning run)") + "\n", flush=True)
    width = max(len(s.name) for s in steps)
    log.info("wall time per step:")
    for s in steps:
        log.info(f"  {s.name:<{width}} {s.seconds:8.0f} s{'  (output existed)' if s.existed else ''}")
    log.info(f"  {'total':<{width}} {sum(s.seconds for s in steps):8.0f} s")
    for line in comparisons(steps):
        log.info(line)
    log.info(f"table, log and transfer.json in {report}")
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
