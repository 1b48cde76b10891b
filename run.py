#!/usr/bin/env python3
"""Set up the toolkit in ./.venv, then run the main job or the tests.

    python3 run.py demo [--no-pbar]     set up, then run the main job on the synthetic phantom
    python3 run.py test [pytest args]   set up, then run the test suite (what CI runs)
    python3 run.py setup                only set up

Needs nothing but Python >= 3.10. Setup is idempotent: once `.venv` holds an install matching
pyproject.toml it takes about a second.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

from medgmae_plans import cpu_recipe as recipe  # standard library only

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".medgmae-install-stamp"
EXTRAS = ".[test,gpu]"
# Where the main job writes when the nnU-Net variables are unset (the toolkit's documented default).
DEMO_ROOT = ROOT / "medgmae_output"


def log(msg: str) -> None:
    print(f"[run.py] {msg}", flush=True)


def install_fingerprint() -> str:
    text = (ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode() + sys.version.encode()
    return hashlib.sha256(text).hexdigest()


def setup() -> None:
    if STAMP.exists() and STAMP.read_text() == install_fingerprint() and PY.exists():
        return
    start = time.time()
    if not PY.exists():
        log(f"creating virtual environment {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    log("installing medgmae and its dependencies (first time: several minutes, ~6 GB with CUDA torch)")
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["--upgrade", "pip", "setuptools", "wheel"], check=True)
    # Plain `torch` resolves to the registry's newest (CUDA) build, never an older CPU-only wheel
    # from a local find-links folder: nnU-Net's trainer lookup needs a torchvision that loads.
    subprocess.run(pip + ["-e", EXTRAS], check=True, cwd=ROOT)
    check = "import torch, torchvision, nnunetv2, SimpleITK, monai, numba; print(torch.__version__)"
    out = subprocess.run([str(PY), "-c", check], check=True, capture_output=True, text=True)
    STAMP.write_text(install_fingerprint())
    log(f"installed (torch {out.stdout.strip()}) in {time.time() - start:.0f} s")


def demo_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.setdefault(var, str(DEMO_ROOT / var))
    env.setdefault("nnUNet_compile", "f")
    return env


# The main job's budget: at most 20 minutes on two idle cores from a fresh clone (each step prints its
# time; measured ones are in docs/results.md). The CPU recipe (medgmae_plans/cpu_recipe.py) at fraction
# 0.1 is scored on 4 held-out test cases; its sliding-window step (the CPU's 1.0) for the final
# validation and the test cases, and its 450 iterations, keep the fine-tuning runs within it.
CONFIGURATION = recipe.CONFIGURATION
PHANTOM = ["-n", str(recipe.PHANTOM_CASES), "--test", "4", "--unlabeled", str(recipe.PHANTOM_UNLABELED)]
PRETRAIN = ["--preset", recipe.PRESET, "--decoder", "gaussian", "--steps", str(recipe.PRETRAIN_STEPS),
            "--crop-centres", recipe.PRETRAIN_CROP_CENTRES]
FINETUNE = ["--fraction", "0.1", *recipe.finetune_flags(), *recipe.unetr_flags()]


Lane = tuple[str, list[list[str]]]  # (tag for its output lines, console commands run one after the other)


def demo_stages(env: dict[str, str], extra: list[str]) -> list[list[Lane]]:
    """The main job as stages of lanes: the lanes of a stage run side by side, the stages one after the
    other (a stage starts when every lane of the one before finished); every command reuses what a
    previous run finished."""
    bin_ = VENV / "bin"
    report = DEMO_ROOT / "report"
    unlabeled = Path(env["nnUNet_raw"]) / "Dataset990_AbdomenPhantom" / "imagesUnlabeled"
    pretrained = pretrain_folder(env) / "checkpoint_final.pt"
    quiet = [*extra, *([] if "--no-pbar" in extra else ["--no-pbar"])]  # side by side: no bars to interleave
    train = [str(bin_ / "medgmae_train"), "Phantom", CONFIGURATION]
    probe = [str(bin_ / "medgmae_probe"), "-d", "Phantom", "-c", CONFIGURATION, "--checkpoint", str(pretrained),
             "--threads", str(recipe.THREADS_PER_RUN), *quiet]
    return [
        [("", [[str(bin_ / "medgmae_make_phantom"), *PHANTOM, "--preview", str(report / "phantom_preview.png"),
                *extra]])],
        [("", [[str(bin_ / "medgmae_plan_and_preprocess"), "-d", "Phantom", "-c", CONFIGURATION, "-np", "2", *extra]])],
        [("", [[str(bin_ / "medgmae_plan_and_preprocess"), "--images", str(unlabeled), "--name", "PhantomUnlabeled",
                "-c", CONFIGURATION, "-np", "2", *extra]])],
        # pretraining uses one thread, so the scratch run takes the other core from the start
        [("[medgmae] ", [[str(bin_ / "medgmae_pretrain"), "-d", "Phantom", "--images", "PhantomUnlabeled",
                          "-c", CONFIGURATION, *PRETRAIN, "--out", str(pretrain_folder(env)), "--resume", *quiet],
                         [*train, "--pretrained", str(pretrained), *FINETUNE, "--continue", *quiet]]),
         ("[scratch] ", [[*train, "--init", "scratch", "--preset", recipe.PRESET, *FINETUNE, "--continue", *quiet]])],
        # Both probes read the finished checkpoint (the random init takes its architecture from it), so they
        # start after the stage above; side by side they take the time of one.
        [("[probe pretrained] ", [[*probe, "-o", str(report / "probe_pretrained")]]),
         ("[probe random init] ", [[*probe, "--random-init", "-o", str(report / "probe_random_init")]])],
        # Dice only: NSD (MONAI's surface Dice) is slow on a CPU; drop --no-nsd for it.
        [("", [[str(bin_ / "medgmae_evaluate"), "Phantom", "--test", "--compare", "--no-nsd", "-np", "2", "-o",
                str(report), *extra]])],
        # what the budget learned and what it did not, in words (run.py itself imports no toolkit code)
        [("", [[str(PY), "-m", "evaluation.main_job_report", str(report), *extra]])],
    ]


def pretrain_folder(env: dict[str, str]) -> Path:
    return Path(env["nnUNet_results"]) / "MedGMAE_pretrain" / f"gaussian_{recipe.PRESET}_p8_{CONFIGURATION}_{recipe.PRETRAIN_CROP_CENTRES}"


def finish_report(env: dict[str, str]) -> None:
    """Put the pretraining pictures beside the evaluation's, and print where everything is (main_job.md,
    printed by the step before, says what the numbers mean)."""
    report = DEMO_ROOT / "report"
    run = pretrain_folder(env)
    snapshots = sorted((run / "snapshots").glob("step_*.png"))
    copies = {run / "loss_curve.png": report / "pretrain_loss_curve.png"}
    if snapshots:
        copies[snapshots[-1]] = report / "pretrain_reconstruction.png"
    for src, dst in copies.items():
        if src.is_file():
            shutil.copyfile(src, dst)
    log(f"report folder {report}:")
    for path in sorted(report.iterdir()):
        if path.is_file():
            print(f"    {path.name}")


def run_lane(lane: Lane, env: dict[str, str]) -> int:
    """Run a lane's commands in order, up to the first failure; a tag prefixes each line (side-by-side lanes)."""
    prefix, steps = lane
    for step in steps:
        log(prefix + "$ " + " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step)))
        t0 = time.time()
        if prefix:
            proc = subprocess.Popen(step, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace")
            for line in proc.stdout:
                print(prefix + line, end="", flush=True)
            code = proc.wait()
        else:
            code = subprocess.run(step, env=env, cwd=ROOT).returncode
        if code:
            log(f"{prefix}step failed with exit code {code}")
            return code
        log(f"{prefix}step done in {time.time() - t0:.0f} s")
    return 0


def run_demo(extra: list[str]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    env = demo_env()
    start = time.time()
    for stage in demo_stages(env, extra):
        with ThreadPoolExecutor(len(stage)) as pool:
            code = max(pool.map(run_lane, stage, [env] * len(stage)))
        if code:
            return code
    finish_report(env)
    log(f"main job finished in {time.time() - start:.0f} s; outputs under {DEMO_ROOT}")
    return 0


def run_tests(extra: list[str]) -> int:
    return subprocess.run([str(PY), "-m", "pytest", *extra], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    setup()
    command, extra = argv[0], argv[1:]
    if command == "demo":
        return run_demo(extra)
    if command == "test":
        return run_tests(extra)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
