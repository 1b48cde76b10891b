"""The experiment's steps: the console commands of each stage, in order, with their resume checks (the
package docstring says what they are). Nothing here runs a command."""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medgmae_plans import cpu_recipe as recipe
from medgmae_plans.configurations import PLANS_NAME
from medgmae_plans.constants import INIT_BY_DECODER
from medgmae_plans.runtime import UserError

from evaluation.folders import REPLICATE_TAG
from medgmae_trainers.finetune.fractions import FRACTION_SEED, fraction_tag

from .settings import SEED

# Fine-tuning init name (trainer names, evaluate's rows) -> the pretraining decoder that makes it.
DECODERS = {"voxelmae": "voxel", "medgmae": "gaussian"}
assert all(INIT_BY_DECODER[d] == i for i, d in DECODERS.items())
INITS = ("scratch", *DECODERS, "nnunet")
PROBE_FRACTIONS = (0.1, 1.0)   # the probe is fitted on 10 % and on all of fold 0's training cases
LOW = 0.1                      # the fine-tuning fraction every arm runs at; scratch also at 1.0
PRESET, CONFIGURATION, PLANS = recipe.PRESET, recipe.CONFIGURATION, PLANS_NAME
FINAL = "checkpoint_final.pt"


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


def trainer_of(init: str, fraction: float, replicate: int) -> str:
    """medgmae_train's trainer_name() with the replicate's tag; spelled out here because its module
    imports nnU-Net."""
    return f"MedGMAETrainer_{init}_{fraction_tag(fraction)}_{REPLICATE_TAG.format(replicate)}"


def finetune_folder(root: Path, dataset: str, init: str, fraction: float, fold: str, replicate: int) -> Path:
    from medgmae_trainers.finetune.run_record import fold_folder

    return fold_folder(root / "nnUNet_results", dataset, trainer_of(init, fraction, replicate), PLANS,
                       CONFIGURATION, fold)




def checkpoints_of(root: Path, decoder: str, seed: int, keep_steps, pretrain_steps: int) -> dict[int, Path]:
    """{step: checkpoint} of one pretraining run's learning curve, the last being checkpoint_final.pt."""
    from medgmae_trainers.pretrain.trainer import kept_checkpoint

    out = pretrain_folder(root, decoder, seed)
    return {**{s: kept_checkpoint(out, s) for s in keep_steps}, pretrain_steps: out / FINAL}


def probe_folder(root: Path, name: str, seed: int) -> Path:
    return root / "report" / "probe" / f"{name}_s{seed}"


def probe_json(root: Path, name: str, seed: int, checkpoint: Path, fraction: float, several: bool) -> Path:
    """Where medgmae_probe writes one (checkpoint, fraction) pair's probe.json."""
    folder = probe_folder(root, name, seed)
    return folder / f"{checkpoint.stem}_{fraction_tag(fraction)}" / "probe.json" if several else folder / "probe.json"


def quality_json(root: Path, seed: int) -> Path:
    return root / "report" / "quality" / f"s{seed}.json"


def build_steps(args, report: Path) -> list[Step]:
    """Every step of the experiment, stage by stage (`Step.kind`)."""
    common = ["--no-pbar"] + (["--verbose"] if args.verbose else [])
    steps = data_steps(args, report, common)
    pool = ["-d", "Phantom", *(["--images", "PhantomUnlabeled"] if args.unlabeled else [])]
    seeds = [SEED + k for k in range(args.seeds)]
    # seed by seed, both objectives side by side: a stopped run leaves whole pairs
    steps += [pretrain_step(args, decoder, seed, pool, common) for seed in seeds for decoder in DECODERS.values()]
    steps += [quality_step(args, seed, pool) for seed in seeds]
    steps += [probe_step(args, name, seed, common) for seed in seeds for name in ("random", *DECODERS.values())]
    budget = [*recipe.finetune_flags(args.epochs, args.iters_per_epoch), "--fold", str(args.fold)]
    runs = [finetune_step(args, "nnunet", LOW, k, budget, common) for k in range(args.nnunet_replicates)]
    runs += [finetune_step(args, init, LOW, k, budget, common) for k in range(args.replicates) for init in INITS[:3]]
    runs += [finetune_step(args, "scratch", 1.0, k, budget, common) for k in range(args.replicates)]
    steps += runs  # nnU-Net's CNN (the longest) first, so that the two lanes end together
    nsd = [] if args.nsd else ["--no-nsd"]
    steps.append(Step("evaluate", [[command("medgmae_evaluate"), "Phantom", "--test", "--compare", *nsd, "-o",
                                    str(report), "-np", str(args.workers), *common]], kind="evaluate"))
    return steps


def phantom_dataset() -> str:
    from preprocessing.phantom import DATASET_NAME, DEFAULT_DATASET_ID

    return f"Dataset{DEFAULT_DATASET_ID:03d}_{DATASET_NAME}"


def data_steps(args, report: Path, common: list[str]) -> list[Step]:
    root, dataset = args.root, phantom_dataset()
    raw, pre = root / "nnUNet_raw" / dataset, root / "nnUNet_preprocessed"
    np_, config = ["-np", str(args.workers)], ["-c", CONFIGURATION]
    steps = [
        Step("phantom", [[command("medgmae_make_phantom"), "-n", str(args.cases), "--test", str(args.test_cases),
                          "--unlabeled", str(args.unlabeled), "--preview", str(report / "phantom_preview.png"),
                          *np_, *common]],
             done=lambda: (raw / "dataset.json").is_file()),
        Step("preprocess Phantom", [[command("medgmae_plan_and_preprocess"), "-d", "Phantom", *config, *np_, *common]],
             done=lambda: (pre / dataset / f"{PLANS}.json").is_file()),
    ]
    if args.unlabeled:
        steps.append(Step("preprocess PhantomUnlabeled",
                          [[command("medgmae_plan_and_preprocess"), "--images", str(raw / "imagesUnlabeled"),
                            "--name", "PhantomUnlabeled", *config, *np_, *common]],
                          done=lambda: (pre / "Collection_PhantomUnlabeled" / f"{PLANS}.json").is_file()))
    return steps


def pretrain_step(args, decoder: str, seed: int, pool: list[str], common: list[str]) -> Step:
    out = pretrain_folder(args.root, decoder, seed)
    warmup = ["--warmup", str(args.pretrain_warmup)] if args.pretrain_warmup is not None else []
    keep = ["--keep-steps", *map(str, args.keep_steps)] if args.keep_steps else []

    def finished():
        record = _read_json(out / "pretrain.json") or {}
        return (out / FINAL).is_file() and (record.get("results") or {}).get("step", 0) >= args.pretrain_steps

    return Step(f"pretrain {decoder} s{seed}", [[
        command("medgmae_pretrain"), *pool, "-c", CONFIGURATION, "--preset", PRESET, "--decoder", decoder,
        "--steps", str(args.pretrain_steps), *keep, *warmup, "--seed", str(seed),
        "--crop-centres", recipe.PRETRAIN_CROP_CENTRES, "--threads", str(recipe.THREADS_PER_RUN),
        "--out", str(out), "--resume", *common]],
        done=finished, kind="pretrain", init=INIT_BY_DECODER[decoder], replicate=seed - SEED)


def quality_step(args, seed: int, pool: list[str]) -> Step:
    """Masked MSE of every checkpoint of both objectives of one seed, against the visible-mean baseline
    and the direct fit (voxel-MAE's rows borrow the first Gaussian checkpoint's ceiling)."""
    ckpts = [c for d in ("gaussian", "voxel") for c in
             checkpoints_of(args.root, d, seed, args.keep_steps, args.pretrain_steps).values()]
    out = quality_json(args.root, seed)
    return Step(f"quality s{seed}", [[sys.executable, "-m", "benchmarks.pretrain_quality", *map(str, ckpts), *pool,
                                      "--threads", str(recipe.THREADS_PER_RUN), "--json", str(out)]],
                done=out.is_file, kind="quality", replicate=seed - SEED)


def probe_step(args, name: str, seed: int, common: list[str]) -> Step:
    """The probe of one pretraining run's learning curve (name = its decoder), or of the seed's random
    init (name "random": the architecture of the seed's MedGMAE checkpoint, weights drawn with `seed`),
    at both fractions, on labelled subset k."""
    k = seed - SEED
    if name == "random":
        ckpts = [checkpoints_of(args.root, "gaussian", seed, (), args.pretrain_steps)[args.pretrain_steps]]
    else:
        ckpts = list(checkpoints_of(args.root, name, seed, args.keep_steps, args.pretrain_steps).values())
    several = len(ckpts) * len(PROBE_FRACTIONS) > 1
    outputs = [probe_json(args.root, name, seed, c, f, several) for c in ckpts for f in PROBE_FRACTIONS]
    return Step(f"probe {name} s{seed}", [[
        command("medgmae_probe"), "-d", "Phantom", "-c", CONFIGURATION, "--checkpoint", *map(str, ckpts),
        *(["--random-init"] if name == "random" else []), "--fraction", *(f"{f:g}" for f in PROBE_FRACTIONS),
        "--fold", str(args.fold), "--seed", str(seed), "--fraction-seed", str(FRACTION_SEED + k),
        "--samples-per-class", str(args.probe_samples), "--threads", str(recipe.THREADS_PER_RUN),
        "-o", str(probe_folder(args.root, name, seed)), *common]],
        done=lambda: all(o.is_file() for o in outputs), kind="probe", init=name, replicate=k)


def finetune_step(args, init: str, fraction: float, k: int, budget: list[str], common: list[str]) -> Step:
    """Fine-tune replicate k (seed 41 + k, labelled subset k, pretraining seed 41 + k's final checkpoint),
    then predict and score the test cases with it (the final evaluation reuses those predictions)."""
    from medgmae_trainers.finetune.run_record import read_record

    if init in DECODERS:
        source = ["--pretrained", str(pretrain_folder(args.root, DECODERS[init], SEED + k) / FINAL)]
    else:
        source = ["--init", init] + (["--preset", PRESET] if init == "scratch" else [])
    lr = [] if init == "nnunet" else recipe.unetr_flags()  # nnU-Net's CNN keeps its own SGD recipe
    trainer = trainer_of(init, fraction, k)
    folder = finetune_folder(args.root, phantom_dataset(), init, fraction, args.fold, k)

    def finished():
        record = read_record(folder)
        return record is not None and record.status == "finished"

    nsd = [] if args.nsd else ["--no-nsd"]
    return Step(f"finetune {init} f{fraction:g} {REPLICATE_TAG.format(k)}", [
        [command("medgmae_train"), "Phantom", CONFIGURATION, *source, "--fraction", f"{fraction:g}",
         "--trainer", trainer, *budget, *lr, "--seed", str(SEED + k), "--fraction-seed", str(FRACTION_SEED + k),
         "--continue", *common],
        [command("medgmae_evaluate"), str(folder.parent), "--test", *nsd, "-np", "1",
         "-o", str(args.root / "report" / "runs" / trainer), *common]],
        done=finished, kind="finetune", init=init, replicate=k)


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




def timings_of(steps: list[Step]) -> list[dict]:
    return [{"step": s.name, "seconds": s.seconds, "output_existed": s.existed, "command": " ".join(s.argv)}
            for s in steps if s.seconds is not None]
