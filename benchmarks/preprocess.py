"""Time `medgmae_plan_and_preprocess` against nnU-Net's `nnUNetv2_plan_and_preprocess` in one run.

    python -m benchmarks.preprocess [--cases 4] [--spacing-scale 1] [-np 2] [--out DIR]

Both commands start as fresh processes on the same phantom dataset (one `nnUNet_raw`), each into
its own `nnUNet_preprocessed`, with the same number of worker processes; nnU-Net runs its default
plans (fingerprint, then 2d, 3d_fullres and, when planned, 3d_lowres). The wall-clock ratio
ours / nnU-Net is printed and written to `<out>/preprocess_benchmark.json`; the target is <= 1.2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.2


def _timed(cmd: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    elapsed = time.perf_counter() - start
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code}; see {log}")
    return elapsed


def _env(raw: Path, preprocessed: Path, results: Path) -> dict:
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(results))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.preprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="phantom training cases (default: 4)")
    parser.add_argument("--spacing-scale", type=float, default=1.0,
                        help="phantom spacing scale; 1 is the realistic CT resolution (default: 1)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2, help="worker processes for both (default: 2)")
    parser.add_argument("--out", type=Path, help="keep the folders and the JSON here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from preprocessing.phantom import generate_dataset

    work = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="medgmae_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    raw, results = work / "nnUNet_raw", work / "nnUNet_results"
    ours_pre, nnunet_pre = work / "preprocessed_medgmae", work / "preprocessed_nnunet"
    for folder in (ours_pre, nnunet_pre):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    generate_dataset(raw, n_train=args.cases, spacing_scale=args.spacing_scale, pbar=False)
    np_ = str(args.num_processes)

    bin_dir = Path(sys.executable).parent
    nnunet_cli = bin_dir / "nnUNetv2_plan_and_preprocess"
    nnunet_cmd = [str(nnunet_cli)] if nnunet_cli.exists() else [
        sys.executable, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
                              "plan_and_preprocess_entry as m; m()"]
    ours_cmd = [sys.executable, "-m", "preprocessing.plan_and_preprocess", "--no-pbar", "--clean"]

    ours = _timed(ours_cmd + ["-d", "990", "-np", np_], _env(raw, ours_pre, results), work / "medgmae.log")
    nnunet = _timed(nnunet_cmd + ["-d", "990", "-np", np_, "-npfp", np_], _env(raw, nnunet_pre, results),
                    work / "nnunet.log")
    nnunet_configs = sorted(json.loads((nnunet_pre / "Dataset990_AbdomenPhantom" / "nnUNetPlans.json").read_text())
                            ["configurations"])
    ratio = ours / nnunet
    report = {"cases": args.cases, "spacing_scale": args.spacing_scale, "num_processes": args.num_processes,
              "medgmae_s": round(ours, 2), "nnunet_s": round(nnunet, 2), "ratio": round(ratio, 3),
              "nnunet_configurations": nnunet_configs, "target_ratio": TARGET_RATIO, "ok": ratio <= TARGET_RATIO}
    (work / "preprocess_benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"medgmae_plan_and_preprocess: {ours:.1f} s   nnUNetv2_plan_and_preprocess ({', '.join(nnunet_configs)}): "
          f"{nnunet:.1f} s   ratio {ratio:.2f} (target <= {TARGET_RATIO})")
    print(f"details: {work / 'preprocess_benchmark.json'}")
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
