"""The phantom's Table 1 as a measured experiment: scratch, voxel-MAE, MedGMAE and nnU-Net's own CNN,
replicated, scored on held-out test cases, with paired intervals (slow, not in CI).

    python -m benchmarks.transfer [--root DIR] [--replicates 3] [--fractions 0.1 1.0] [--test-cases 10]
                                  [--inits scratch voxelmae medgmae nnunet] [--pretrain-steps N]
                                  [--epochs N] [--iters-per-epoch N] [--seed 41] [--quick]

It runs the toolkit's console commands as subprocesses, exactly as a user would, in its own nnU-Net
folders `<root>/nnUNet_{raw,preprocessed,results}`, on the main job's CPU recipe
(`medgmae_plans/cpu_recipe.py`: `3d_lowres`, 48^3 patches, 9 x 50 fine-tuning iterations):
1. data: `medgmae_make_phantom -n 20 --test 10 --unlabeled 8`, `medgmae_plan_and_preprocess -d Phantom
   -c 3d_lowres` and the unlabelled collection `PhantomUnlabeled`;
2. pretraining: `medgmae_pretrain --preset tiny -c 3d_lowres --steps 1200` per pretrained init
   (`--decoder voxel` for voxel-MAE, `gaussian` for MedGMAE, `hierarchical` for MedGMAE*) and per
   replicate k, with seed `--seed` + k (the same steps and seeds for every decoder);
3. fine-tuning, fold 0: `medgmae_train Phantom 3d_lowres` for each init x fraction x replicate, then
   `medgmae_evaluate <run> --test` to predict and score the 10 test cases with it. Replicate k is
   the trainer tagged `r<k>` (medgmae_evaluate's replicate convention) with fine-tuning seed `--seed`
   + k, fine-tuned from pretraining seed `--seed` + k, on labelled subset k (`--fraction-seed`
   nnU-Net's 12345 + k): the spread over replicates covers both seeds and which cases were labelled,
   and every init's replicate k draws the same seeds and cases (paired); every UNETR init runs under
   the same optimiser (`finetune/optim.py`). `--replicates` (3) at each
   fraction below 1, one at 1.0 (the ceiling). The `nnunet` row is nnU-Net's PlainConvUNet with its
   SGD recipe (`medgmae_train --init nnunet`), at the same patch, iterations, seed and precision,
   at the fractions below 1 only (the anchor for the low-label claim);
4. `medgmae_evaluate Phantom --test --compare --no-nsd -o <root>/report`: Dice on the test cases as in
   Table 1, mean ± sd over replicates, each init's paired bootstrap interval against scratch (cases
   resampled, replicates averaged) and in words which intervals exclude 0.
The validation cases of fold 0 are never used for the table. Pretraining and fine-tuning run two at
a time, one thread each (the two cores side by side); each step's output goes to
`<root>/report/logs/<step>.log` and the console shows when each starts and ends. Every command reuses
what a previous run finished, so after a crash or Ctrl-C the same command line resumes. Changing a
budget for runs that exist is refused by the commands themselves; use another `--root` for another
budget.

At the end it prints the table, the wall time of every step and stage, and the time of MedGMAE's
pretraining against voxel-MAE's and of each init's fine-tuning against scratch, with their ratios.
`<root>/report/` holds `table1.md` (and the rest of `medgmae_evaluate --compare`'s outputs),
`transfer.log`, and `transfer.json` (settings, step and stage timings, the table), rewritten after
every step.

Budget: at the defaults, 6120 s (1 h 42 min) on two idle cores from a fresh clone (2026-12-06; data 139 s,
pretraining 295 s, fine-tuning and scoring 5621 s, comparison 65 s); the target is at most 2 hours. The
table, intervals and what they mean: docs/results.md, "The phantom's Table 1". `--quick` (6 cases, 2 test cases, 2 unlabelled,
20 pretraining steps, 1 epoch x 3 iterations, 2 replicates, root
`./medgmae_benchmarks/transfer_quick`) checks the orchestration in minutes; its table means nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medgmae_plans import cpu_recipe as recipe
from medgmae_plans.configurations import PLANS_NAME
from medgmae_plans.constants import FROM_SCRATCH, INIT_BY_DECODER
from medgmae_plans.runtime import UserError, add_common_flags, cli_entry, setup_run_log, write_run_json

from evaluation.folders import REPLICATE_TAG
from medgmae_trainers.finetune.fractions import FRACTION_SEED

# Fine-tuning init name (trainer names, evaluate's rows) -> the pretraining decoder that makes it.
DECODERS = {init: decoder for decoder, init in INIT_BY_DECODER.items()}
INITS = ("scratch", *DECODERS, "nnunet")
DEFAULTS = dict(cases=recipe.PHANTOM_CASES, test_cases=10, unlabeled=recipe.PHANTOM_UNLABELED,
                pretrain_steps=recipe.PRETRAIN_STEPS, pretrain_warmup=None, epochs=recipe.EPOCHS,
                iters_per_epoch=recipe.ITERS_PER_EPOCH, replicates=3)
QUICK = dict(cases=6, test_cases=2, unlabeled=2, pretrain_steps=20, pretrain_warmup=5, epochs=1, iters_per_epoch=3,
             replicates=2)
PRESET, CONFIGURATION, PLANS = recipe.PRESET, recipe.CONFIGURATION, PLANS_NAME
LANES = 2  # pretraining and fine-tuning runs side by side, one thread each


@dataclass
class Step:
    """Console commands run one after the other; `done` says whether a previous run already finished
    the first (the commands themselves decide what to reuse)."""
    name: str
    commands: list[list[str]]
    done: Callable[[], bool] = lambda: False
    kind: str = "data"
    init: str | None = None
    replicate: int | None = None
    seconds: float | None = None
    existed: bool = False
    log: Path | None = field(default=None, repr=False)

    @property
    def argv(self) -> list[str]:
        return self.commands[0]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="benchmark folder (default ./medgmae_benchmarks/transfer, "
                   "or ./medgmae_benchmarks/transfer_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny budget to check the orchestration: "
                   + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items() if v is not None))
    p.add_argument("--cases", type=int, help=f"labelled phantom training cases, >= 5 (default {DEFAULTS['cases']})")
    p.add_argument("--test-cases", type=int,
                   help=f"held-out test cases that score the table, >= 1 (default {DEFAULTS['test_cases']})")
    p.add_argument("--unlabeled", type=int, help=f"unlabelled phantom images, >= 0 (default {DEFAULTS['unlabeled']})")
    p.add_argument("--pretrain-steps", type=int,
                   help=f"steps of each pretraining, >= 1 (default {DEFAULTS['pretrain_steps']})")
    p.add_argument("--pretrain-warmup", type=int, help="pretraining warmup steps (default: the tiny preset's 50)")
    p.add_argument("--seed", type=int, default=41, help="pretraining and fine-tuning seed of replicate 0, the same "
                   "for every init; replicate k's is seed + k (default 41)")
    p.add_argument("--epochs", type=int, help=f"fine-tuning epochs, >= 1 (default {DEFAULTS['epochs']})")
    p.add_argument("--iters-per-epoch", type=int,
                   help=f"fine-tuning iterations per epoch, >= 1 (default {DEFAULTS['iters_per_epoch']})")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0], help="each in (0, 1] (default 0.1 1.0)")
    p.add_argument("--replicates", type=int, help=f"replicates of every init at each fraction below 1, >= 1, each a "
                   f"pretraining and a fine-tuning seed; 1.0 gets one (default {DEFAULTS['replicates']})")
    p.add_argument("--inits", nargs="+", default=["scratch", "voxelmae", "medgmae", "nnunet"], choices=INITS)
    p.add_argument("--fold", default="0", help="cross-validation fold of every fine-tuning run (default 0)")
    p.add_argument("--nsd", action="store_true", help="also compute surface Dice at 1 mm (slow on poor predictions)")
    p.add_argument("-np", "--workers", type=int, default=2,
                   help="processes for phantom, preprocessing and the final evaluation, >= 1 (default 2)")
    add_common_flags(p)
    args = p.parse_args(argv)
    budget = QUICK if args.quick else DEFAULTS
    for key, value in budget.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.root is None:
        args.root = Path("medgmae_benchmarks") / ("transfer_quick" if args.quick else "transfer")
    args.root = args.root.resolve()
    for key in ("cases", "test_cases", "pretrain_steps", "epochs", "iters_per_epoch", "replicates", "workers"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.unlabeled < 0:
        raise UserError("--unlabeled must be at least 0")
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
    return root / "nnUNet_results" / "MedGMAE_pretrain" / f"{decoder}_{PRESET}_{recipe.PRETRAIN_CROP_CENTRES}_s{seed}"


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

    root, common = args.root, ["--no-pbar"] + (["--verbose"] if args.verbose else [])
    dataset = f"Dataset{DEFAULT_DATASET_ID:03d}_{DATASET_NAME}"
    raw = root / "nnUNet_raw" / dataset
    pre = root / "nnUNet_preprocessed"
    np_, config = ["-np", str(args.workers)], ["-c", CONFIGURATION]
    steps = [
        Step("phantom", [[command("medgmae_make_phantom"), "-n", str(args.cases), "--test", str(args.test_cases),
                          "--unlabeled", str(args.unlabeled), "--preview", str(report / "phantom_preview.png"),
                          *np_, *common]],
             done=lambda: (raw / "dataset.json").is_file()),
        Step("preprocess Phantom", [[command("medgmae_plan_and_preprocess"), "-d", "Phantom", *config, *np_, *common]],
             done=lambda: (pre / dataset / f"{PLANS}.json").is_file()),
    ]
    pretrain_args = []
    if args.unlabeled:
        steps.append(Step("preprocess PhantomUnlabeled",
                          [[command("medgmae_plan_and_preprocess"), "--images", str(raw / "imagesUnlabeled"),
                            "--name", "PhantomUnlabeled", *config, *np_, *common]],
                          done=lambda: (pre / "Collection_PhantomUnlabeled" / f"{PLANS}.json").is_file()))
        pretrain_args = ["--images", "PhantomUnlabeled"]

    # one pretraining per (pretrained init, replicate seed) that some fine-tuning run uses
    replicates = range(max(len(replicates_at(f, args.replicates)) for f in args.fractions))
    checkpoints = {}
    warmup = ["--warmup", str(args.pretrain_warmup)] if args.pretrain_warmup is not None else []
    for init in args.inits:
        if init in FROM_SCRATCH:
            continue
        decoder = DECODERS[init]
        for replicate in replicates:
            seed = args.seed + replicate
            out = pretrain_folder(root, decoder, seed)
            checkpoints[init, replicate] = out / "checkpoint_final.pt"

            def finished(out=out, ckpt=checkpoints[init, replicate]):
                record = _read_json(out / "pretrain.json") or {}
                return ckpt.is_file() and (record.get("results") or {}).get("step", 0) >= args.pretrain_steps

            steps.append(Step(f"pretrain {decoder} s{seed}", [[
                command("medgmae_pretrain"), "-d", "Phantom", *pretrain_args, *config, "--preset", PRESET,
                "--decoder", decoder, "--steps", str(args.pretrain_steps), *warmup, "--seed", str(seed),
                "--crop-centres", recipe.PRETRAIN_CROP_CENTRES,
                "--threads", str(recipe.THREADS_PER_RUN), "--out", str(out), "--resume", *common]],
                done=finished, kind="pretrain", init=init, replicate=replicate))

    budget = [*recipe.finetune_flags(args.epochs, args.iters_per_epoch), "--fold", str(args.fold)]
    runs = []
    for fraction in args.fractions:
        for replicate in replicates_at(fraction, args.replicates):
            for init in args.inits:
                if init == "nnunet" and fraction >= 1.0:
                    continue  # the anchor row is for the low-label columns
                runs.append(finetune_step(args, dataset, init, fraction, replicate, checkpoints.get((init, replicate)),
                                          budget, common, read_record))
    # the longest runs first, so that the two lanes end together
    steps += sorted(runs, key=lambda s: s.init != "nnunet")

    nsd = [] if args.nsd else ["--no-nsd"]
    steps.append(Step("evaluate", [[command("medgmae_evaluate"), "Phantom", "--test", "--compare", *nsd, "-o",
                                    str(report), *np_, *common]], kind="evaluate"))
    return steps


def finetune_step(args, dataset: str, init: str, fraction: float, replicate: int, checkpoint: Path | None,
                  budget: list[str], common: list[str], read_record) -> Step:
    """Fine-tune one replicate, then predict and score the test cases with it (the final evaluation
    reuses those predictions)."""
    source = ["--pretrained", str(checkpoint)] if checkpoint else ["--init", init] + (
        ["--preset", PRESET] if init == "scratch" else [])
    lr = [] if init == "nnunet" else recipe.unetr_flags()
    trainer = trainer_of(init, fraction, replicate)
    folder = finetune_folder(args.root, dataset, init, fraction, args.fold, replicate)

    def finished():
        record = read_record(folder)
        return record is not None and record.status == "finished"

    nsd = [] if args.nsd else ["--no-nsd"]
    return Step(f"finetune {init} f{fraction:g} {REPLICATE_TAG.format(replicate)}", [
        [command("medgmae_train"), "Phantom", CONFIGURATION, *source, "--fraction", f"{fraction:g}",
         "--trainer", trainer, *budget, *lr, "--seed", str(args.seed + replicate),
         "--fraction-seed", str(FRACTION_SEED + replicate), "--continue", *common],
        [command("medgmae_evaluate"), str(folder.parent), "--test", *nsd, "-np", "1",
         "-o", str(args.root / "report" / "runs" / trainer), *common]],
        done=finished, kind="finetune", init=init, replicate=replicate)


def settings_of(args) -> dict:
    keys = ("root", "quick", "cases", "test_cases", "unlabeled", "pretrain_steps", "pretrain_warmup", "seed", "epochs",
            "iters_per_epoch", "fractions", "replicates", "inits", "fold", "nsd", "workers")
    return {**{k: getattr(args, k) for k in keys}, "preset": PRESET, "configuration": CONFIGURATION,
            "unetr_lr": recipe.UNETR_LR, "threads_per_run": recipe.THREADS_PER_RUN, "lanes": LANES}


def timings_of(steps: list[Step]) -> list[dict]:
    return [{"step": s.name, "seconds": s.seconds, "output_existed": s.existed, "command": " ".join(s.argv)}
            for s in steps if s.seconds is not None]


def comparisons(steps: list[Step]) -> list[str]:
    """Ours against the baseline measured in this run, as seconds per run (the runs were timed side by
    side, two at a time): MedGMAE vs voxel-MAE pretraining, each init's fine-tuning (training and
    test-case prediction) vs scratch's. A run reused from a previous benchmark is not a measurement."""
    times: dict[tuple[str, str], list[float]] = {}
    for s in steps:
        if s.seconds is not None and not s.existed and s.kind in ("pretrain", "finetune"):
            times.setdefault((s.kind, s.init), []).append(s.seconds)

    def per_run(kind: str, init: str) -> tuple[float, int] | None:
        runs = times.get((kind, init))
        return (sum(runs) / len(runs), len(runs)) if runs else None

    lines = []
    gauss, voxel = per_run("pretrain", "medgmae"), per_run("pretrain", "voxelmae")
    if gauss and voxel:
        lines.append(f"pretraining: MedGMAE {gauss[0]:.0f} s per run ({gauss[1]}), voxel-MAE {voxel[0]:.0f} s "
                     f"({voxel[1]}), ratio {gauss[0] / voxel[0]:.2f}")
    scratch = per_run("finetune", "scratch")
    for kind, init in times:
        ours = per_run(kind, init)
        if kind == "finetune" and init != "scratch" and scratch:
            lines.append(f"fine-tuning: {init} {ours[0]:.0f} s per run ({ours[1]}), scratch {scratch[0]:.0f} s "
                         f"({scratch[1]}), ratio {ours[0] / scratch[0]:.2f}")
    return lines


def _show(argv: list[str]) -> str:
    return " ".join([Path(argv[0]).name, *argv[1:]])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", name)


class Runner:
    """Runs the steps stage by stage (data, pretraining, fine-tuning, evaluation): the steps of a
    stage `LANES` at a time, each into its own log file; the first failure stops new starts."""

    def __init__(self, steps: list[Step], env: dict[str, str], cwd: Path, logs: Path, log, save):
        self.steps, self.env, self.cwd, self.logs, self.log, self.save = steps, env, cwd, logs, log, save
        self.failed: list[Step] = []
        self.stage_seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for kind in dict.fromkeys(s.kind for s in self.steps):
            stage = [s for s in self.steps if s.kind == kind]
            t0 = time.time()
            with ThreadPoolExecutor(LANES if kind in ("pretrain", "finetune") else 1) as pool:
                list(pool.map(self._run_step, stage))
            self.stage_seconds[kind] = time.time() - t0
            if self.failed:
                step = self.failed[0]
                tail = step.log.read_text(errors="replace").strip().splitlines()[-1:] if step.log else []
                raise UserError(f"step '{step.name}' failed ({tail[0] if tail else 'no output'}; whole output in "
                                f"{step.log}); run the same command again to resume")
            self.log.info(f"stage {kind} done in {self.stage_seconds[kind]:.0f} s")

    def _run_step(self, step: Step) -> None:
        if self.failed:
            return
        i = self.steps.index(step) + 1
        step.existed = step.done()
        step.log = self.logs / f"{_slug(step.name)}.log"
        note = " (its output exists from a previous run)" if step.existed else ""
        self.log.info(f"[{i}/{len(self.steps)}] {step.name} started{note}; log {step.log}")
        t0 = time.time()
        with open(step.log, "a") as out:
            for argv in step.commands:
                out.write(f"$ {_show(argv)}\n")
                out.flush()
                if subprocess.run(argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT).returncode:
                    with self._lock:
                        self.failed.append(step)
                    break
        step.seconds = time.time() - t0
        with self._lock:
            self.log.info(f"[{i}/{len(self.steps)}] {step.name} {'FAILED' if step in self.failed else 'done'} "
                          f"in {step.seconds:.0f} s")
            self.save("running" if not self.failed else f"failed at step {step.name}")


def _main(argv) -> int:
    args = parse_args(argv)
    report = args.root / "report"
    report.mkdir(parents=True, exist_ok=True)
    log = setup_run_log(report, "transfer", args.verbose)
    steps = build_steps(args, report)
    log.info(f"transfer benchmark in {args.root}: {len(steps)} steps, "
             f"settings {json.dumps(settings_of(args), default=str)}")
    start = time.time()
    runner = None

    def save(status: str, table: str | None = None) -> None:
        write_run_json(report, "transfer", settings_of(args),
                       {"status": status, "timings": timings_of(steps), "comparisons": comparisons(steps),
                        "stages_s": runner.stage_seconds if runner else {}, "wall_s": round(time.time() - start, 1),
                        "table1_md": table})

    runner = Runner(steps, benchmark_env(args.root), args.root, report / "logs", log, save)
    runner.run()
    table_path = report / "table1.md"
    table = table_path.read_text() if table_path.is_file() else None
    save("finished", table)
    print("\n" + (table.strip() if table else f"(no {table_path}: no finished fine-tuning run)") + "\n", flush=True)
    width = max(len(s.name) for s in steps)
    log.info("wall time per step (pretraining and fine-tuning two at a time):")
    for s in steps:
        log.info(f"  {s.name:<{width}} {s.seconds:8.0f} s{'  (output existed)' if s.existed else ''}")
    for kind, seconds in runner.stage_seconds.items():
        log.info(f"  {'stage ' + kind:<{width}} {seconds:8.0f} s")
    log.info(f"  {'total wall time':<{width}} {time.time() - start:8.0f} s")
    for line in comparisons(steps):
        log.info(line)
    log.info(f"table, log and transfer.json in {report}")
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
