"""Pretraining in bf16 against float32 on this CPU: seconds per step and the loss curves, per decoder.

    python -m benchmarks.pretrain_bf16 [--root DIR] [--steps 2000] [--decoders gaussian voxel]

What runs: the phantom of the CPU recipe (`medgmae_plans/cpu_recipe.py`), planned at `3d_lowres`, then
for each decoder two `medgmae_pretrain` runs of the tiny preset with the same seed, crops and masks,
one with bf16 autocast (`--cpu-bf16`) and one in float32 (the default), side by side (one thread each, so load from
other processes falls on both alike). A finished run is reused, so the command resumes after a crash.

Endpoint and decision rule (fixed before the run):
- speed: the median of the runs' `sec_per_step` rows (`metrics.jsonl`, one row per 10 steps), bf16
  over float32; bf16 is faster when the ratio is below 0.95;
- agreement: the mean loss over the last 10 % of steps, and the largest gap between the two curves
  smoothed over 100 steps after the first 10 %; they agree when both relative gaps are at most 5 %;
- verdict: bf16 becomes the CPU default where it is faster and agrees for every decoder; otherwise
  the CPU default stays float32 (`PretrainSettings.cpu_bf16`). Measured 2026-12-07: not faster
  (0.99x, 0.97x) and 5-12 % apart, so float32 (docs/results.md).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medgmae_plans import cpu_recipe as recipe

FASTER, AGREE, SMOOTH = 0.95, 0.05, 10  # ratio below which bf16 is faster; relative gap; rows (x10 steps)


def module(name: str, *args) -> list[str]:
    return [sys.executable, "-m", name, *map(str, args)]


def prepare_data(root: Path, env: dict) -> None:
    """The phantom, planned at the CPU recipe's configuration (skipped when already there)."""
    if (root / "nnUNet_preprocessed").exists() and any((root / "nnUNet_preprocessed").glob("*/MedGMAEPlans.json")):
        return
    subprocess.run(module("preprocessing.phantom.cli", "-n", recipe.PHANTOM_CASES, "--no-pbar"), env=env, check=True)
    subprocess.run(module("preprocessing.plan_and_preprocess", "-d", "Phantom", "-c", recipe.CONFIGURATION,
                          "-np", "2", "--no-pbar"), env=env, check=True)


def pretrain(root: Path, env: dict, decoder: str, precision: str, steps: int) -> Path:
    out = root / "runs" / f"{decoder}_{precision}_{steps}"
    if (out / "checkpoint_final.pt").exists():
        return out
    cmd = module("medgmae_trainers.pretrain.cli", "-d", "Phantom", "-c", recipe.CONFIGURATION, "--preset",
                 recipe.PRESET, "--decoder", decoder, "--steps", steps, "--seed", 41, "--threads", 1,
                 "--workers", 1, "--out", out, "--no-pbar", "--png-every", steps, "--save-every", 500,
                 *(["--cpu-bf16"] if precision == "bf16" else []), *(["--resume"] if out.exists() else []))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "a") as log:
        subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def compare(bf16: list[dict], fp32: list[dict]) -> dict:
    """Speed ratio and the two loss gaps of one decoder (module docstring)."""
    speed = float(np.median([r["sec_per_step"] for r in bf16]) / np.median([r["sec_per_step"] for r in fp32]))
    a, b = (np.array([r["loss"] for r in x]) for x in (bf16, fp32))
    n = min(len(a), len(b))
    tail = max(1, n // 10)
    end_gap = abs(a[n - tail:n].mean() - b[n - tail:n].mean()) / b[n - tail:n].mean()
    kernel = np.ones(SMOOTH) / SMOOTH
    sa, sb = (np.convolve(x[:n], kernel, mode="valid") for x in (a, b))
    curve_gap = float(np.max(np.abs(sa - sb)[tail:] / sb[tail:])) if len(sa) > tail else float("nan")
    return {"bf16_over_fp32": speed, "end_loss": {"bf16": float(a[n - tail:n].mean()), "fp32": float(b[n - tail:n].mean())},
            "end_gap": float(end_gap), "curve_gap": curve_gap,
            "sec_per_step": {"bf16": float(np.median([r["sec_per_step"] for r in bf16])),
                             "fp32": float(np.median([r["sec_per_step"] for r in fp32]))},
            "faster": speed < FASTER, "agree": end_gap <= AGREE and curve_gap <= AGREE}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("medgmae_output/bench_pretrain_bf16"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--decoders", nargs="+", default=["gaussian", "voxel"])
    args = p.parse_args(argv)
    root = args.root.resolve()
    env = {**__import__("os").environ, "nnUNet_compile": "f",
           **{v: str(root / v) for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
    start = time.time()
    prepare_data(root, env)
    results = {}
    for decoder in args.decoders:
        with ThreadPoolExecutor(2) as pool:  # bf16 and fp32 side by side
            runs = list(pool.map(lambda prec: pretrain(root, env, decoder, prec, args.steps), ("bf16", "fp32")))
        results[decoder] = compare(rows(runs[0]), rows(runs[1]))
    verdict = all(r["faster"] and r["agree"] for r in results.values())
    print(f"pretraining, tiny preset, {recipe.CONFIGURATION}, {args.steps} steps, batch 2, one thread per run, "
          f"bf16 and fp32 side by side ({time.time() - start:.0f} s)")
    print(f"{'decoder':<10} {'fp32 s/step':>11} {'bf16 s/step':>11} {'ratio':>6} {'fp32 end':>9} {'bf16 end':>9} "
          f"{'end gap':>8} {'curve gap':>9}")
    for decoder, r in results.items():
        print(f"{decoder:<10} {r['sec_per_step']['fp32']:11.3f} {r['sec_per_step']['bf16']:11.3f} "
              f"{r['bf16_over_fp32']:6.2f} {r['end_loss']['fp32']:9.4f} {r['end_loss']['bf16']:9.4f} "
              f"{r['end_gap']:8.1%} {r['curve_gap']:9.1%}")
    print("verdict: " + ("bf16 is faster and agrees for every decoder: make it the CPU default" if verdict else
                         "bf16 does not pass (see faster/agree): the CPU default stays float32"))
    (root / "pretrain_bf16.json").write_text(json.dumps({"steps": args.steps, "results": results,
                                                         "bf16_default": verdict}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
