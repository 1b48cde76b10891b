"""How much the phantom's cases vary, and what a case costs: issue 25's four numbers and the time per case.

    python -m benchmarks.phantom_population [--cases 24] [--seed 7] [--no-baseline] [--out JSON]
    python -m benchmarks.phantom_population --table 100 [--spacing-scale 2]   (docs/phantom.md's table)

Over `--cases` default training cases (full resolution, `case_spec(seed, "train", i)`), rendered in
this process:
- the sd of the liver's median HU across cases (target >= 15 HU);
- the span (max - min) of the right kidney's and the aorta's median HU (targets >= 80 and >= 150 HU);
- the mean pairwise Dice of the liver masks after each is moved to its centroid and scaled to the
  same volume (target <= 0.82): each mask is sampled, nearest-neighbour, on one 2 mm grid in
  physical (LPS) millimetres, so spacing and flipped direction matrices do not matter.
It also times each case's spec and render (the generator; writing the NIfTI files is the same for
every version), and prints the median seconds per case. The baseline is
generator version 2 (commit `BASELINE_COMMIT`), taken from git into a temporary folder and run in a
subprocess on the same cases in the same run; `--no-baseline` skips it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "94b8817"  # the last commit with generator version 2
TARGETS = {"liver_median_sd": 15.0, "kidney_median_span": 80.0, "aorta_median_span": 150.0,
           "liver_shape_dice": 0.82}
SHAPE_GRID_MM = 2.0
SHAPE_VOLUME_ML = 1500.0  # every liver is scaled to this volume before the overlap


def _liver_on_common_grid(label: np.ndarray, coords, liver: int) -> np.ndarray:
    """The liver mask, centroid at the origin and scaled to SHAPE_VOLUME_ML, on a 2 mm grid (bool)."""
    iz, iy, ix = np.nonzero(label == liver)
    pts = np.stack([coords[0][iz], coords[1][iy], coords[2][ix]], 1).astype(np.float64)
    voxel_ml = np.prod([abs(float(c[1] - c[0])) for c in coords]) / 1000.0
    k = np.cbrt(SHAPE_VOLUME_ML / (len(pts) * voxel_ml))  # scale factor to the common volume
    centroid = pts.mean(0)
    half = 160.0  # mm: larger than any scaled liver
    axis = np.arange(-half, half, SHAPE_GRID_MM) + SHAPE_GRID_MM / 2
    gz, gy, gx = np.meshgrid(axis, axis, axis, indexing="ij")
    out = np.ones(gz.shape, bool)
    index = []
    for a, g in enumerate((gz, gy, gx)):  # the case's voxel nearest to each common-grid point
        c = coords[a].astype(np.float64)
        step = float(c[1] - c[0])
        i = np.rint((centroid[a] + g / k - c[0]) / step).astype(np.int64)
        out &= (i >= 0) & (i < len(c))
        index.append(np.clip(i, 0, len(c) - 1))
    return out & (label[tuple(index)] == liver)


def measure(n_cases: int, seed: int) -> dict:
    """Render the cases in this process; the four numbers and the seconds per case."""
    from preprocessing.labels import AMOS_LABELS
    from preprocessing.phantom import case_spec
    from preprocessing.phantom.render import case_grid, render_case

    medians = {"liver": [], "right kidney": [], "aorta": []}
    shapes, seconds = [], []
    for i in range(n_cases):
        start = time.perf_counter()
        spec, noise_seed = case_spec(seed, "train", i)
        case = render_case(spec, noise_seed)
        seconds.append(time.perf_counter() - start)
        for organ, values in medians.items():
            inside = case.hu[case.label == AMOS_LABELS[organ]]
            values.append(float(np.median(inside)) if inside.size else float("nan"))
        grid, _ = case_grid(spec)
        shapes.append(_liver_on_common_grid(case.label, grid.coords, AMOS_LABELS["liver"]))
    dice = [2 * (a & b).sum() / (a.sum() + b.sum()) for a, b in itertools.combinations(shapes, 2)]
    span = lambda v: float(np.nanmax(v) - np.nanmin(v))  # noqa: E731
    return {"cases": n_cases, "seed": seed,
            "liver_median_sd": float(np.nanstd(medians["liver"])),
            "kidney_median_span": span(medians["right kidney"]),
            "aorta_median_span": span(medians["aorta"]),
            "liver_shape_dice": float(np.mean(dice)),
            "seconds_per_case": float(np.median(seconds)),
            "medians": medians}


def _baseline(n_cases: int, seed: int) -> dict | None:
    """The same measurement on generator version 2, from git, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        files = ["preprocessing/__init__.py", "preprocessing/labels.py", "preprocessing/phantom",
                 "benchmarks/__init__.py", "benchmarks/phantom_population.py"]
        archive = subprocess.run(["git", "archive", BASELINE_COMMIT, *files[:3]], cwd=ROOT, capture_output=True)
        if archive.returncode:
            print(f"baseline skipped: git archive {BASELINE_COMMIT} failed ({archive.stderr.decode().strip()})")
            return None
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        (Path(tmp) / "benchmarks").mkdir()
        for name in files[3:]:
            (Path(tmp) / name).write_bytes((ROOT / name).read_bytes())
        # the archived `preprocessing` shadows this tree's; medgmae_plans still comes from ROOT
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, str(ROOT)]))
        out = Path(tmp) / "baseline.json"
        subprocess.run([sys.executable, "-m", "benchmarks.phantom_population", "--cases", str(n_cases),
                        "--seed", str(seed), "--no-baseline", "--out", str(out)], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["this_tree"]


def population_table(n_cases: int, seed: int, spacing_scale: float) -> str:
    """docs/phantom.md's population table (Markdown): organ volumes, HU per organ and phase, bodies and
    coverage over `n_cases` training cases, beside the published ranges the generator draws from."""
    from preprocessing.labels import AMOS_LABELS
    from preprocessing.phantom import case_spec
    from preprocessing.phantom.anatomy import expected_labels
    from preprocessing.phantom.phases import HU_BY_PHASE, PHASES
    from preprocessing.phantom.population import ICRP_VOLUME_ML
    from preprocessing.phantom.render import render_case

    hu_organs = {"liver": "liver", "spleen": "spleen", "right kidney": "renal cortex", "aorta": "aortic blood",
                 "postcava": "caval blood", "pancreas": "pancreas"}
    volumes = {o: [] for o in ICRP_VOLUME_ML}
    hu = {(o, p): [] for o in hu_organs for p in PHASES}
    specs = []
    for i in range(n_cases):
        spec, noise_seed = case_spec(seed, "train", i, spacing_scale)
        case = render_case(spec, noise_seed)
        specs.append(spec)
        voxel_ml = float(np.prod(case.spacing)) / 1000
        covered = set(expected_labels(spec))
        for organ in volumes:
            if AMOS_LABELS[organ] in covered and organ != "stomach":  # the stomach's volume is its wall + contents
                volumes[organ].append((case.label == AMOS_LABELS[organ]).sum() * voxel_ml)
        for organ in hu_organs:
            inside = case.hu[case.label == AMOS_LABELS[organ]]
            if inside.size > 50:
                hu[organ, spec.phase].append(float(np.median(inside)))

    def q(v, fmt="{:.0f}"):
        if not v:
            return "-"
        lo, mid, hi = np.percentile(v, [5, 50, 95])
        return f"{fmt.format(mid)} ({fmt.format(lo)}-{fmt.format(hi)})"

    lines = [f"Population of {n_cases} default training cases (seed {seed}, spacing x{spacing_scale:g}); "
             "median (5th-95th percentile).", "", "| organ | volume ml (phantom; organ fully in the scan) | "
             "ICRP 89 reference man / woman |", "| --- | --- | --- |"]
    for organ, v in volumes.items():
        if organ != "stomach":
            lines.append(f"| {organ} | {q(v)} (n={len(v)}) | {ICRP_VOLUME_ML[organ][0]} / {ICRP_VOLUME_ML[organ][1]} |")
    lines += ["", "| organ: median HU | " + " | ".join(PHASES) + " |", "| --- |" + " --- |" * len(PHASES)]
    for organ, tissue in hu_organs.items():
        cells = [f"{q(hu[organ, p])} [{HU_BY_PHASE[tissue][p][0]:.0f}-{HU_BY_PHASE[tissue][p][1]:.0f}]"
                 for p in PHASES]
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    phase_share = {p: sum(s.phase == p for s in specs) / n_cases for p in PHASES}
    pat = lambda k: [s.patient[k] for s in specs]  # noqa: E731
    lines += ["", "| body and scan | phantom | published / target |", "| --- | --- | --- |",
              f"| phase mix NC / art / PV / delayed | " + " / ".join(f"{100 * v:.0f} %" for v in phase_share.values())
              + " | 25 / 15 / 50 / 10 % |",
              f"| women | {100 * np.mean([s.female for s in specs]):.0f} % | 50 % |",
              f"| height cm | {q(pat('height_cm'))} | men 176, women 163 (ICRP 89) |",
              f"| BMI kg/m^2 | {q(pat('bmi'), '{:.1f}')} | drawn log-normal, median 26, clipped to 17-45 |",
              f"| subcutaneous fat mm | {q(pat('fat_mm'))} | 5-60 |",
              f"| visceral fat (cavity growth) mm | {q(pat('visceral_mm'))} | rises with BMI, more in men (Kvist 1988) |",
              f"| body width x depth mm | {q([2 * s.half_width for s in specs])} x {q([2 * s.half_depth for s in specs])} "
              "| follows from height, fat and visceral fat (no published range used) |",
              f"| scan length mm | {q([s.z_top - s.z_bottom for s in specs])} | lung bases to kidneys or pelvis |",
              f"| abdomen + pelvis | {100 * np.mean([s.pelvis for s in specs]):.0f} % | 35 % |",
              f"| top cuts the liver dome | {100 * np.mean([s.z_top < s.breath_mm for s in specs]):.0f} % | ~15 % |",
              f"| breath-hold shift of the dome mm | {q([s.breath_mm for s in specs])} | +-30 |",
              f"| noise sd HU (before the kernel) | {q([1.8 * s.noise_hu for s in specs])} | |",
              f"| slice spacing mm (x{spacing_scale:g}) | {q([s.spacing[0] for s in specs], '{:.1f}')} | 1-5 |"]
    return "\n".join(lines)


def _report(name: str, r: dict) -> str:
    return (f"{name:>12}: liver median HU sd {r['liver_median_sd']:6.1f}   right-kidney median span "
            f"{r['kidney_median_span']:6.1f}   aorta median span {r['aorta_median_span']:6.1f}   "
            f"liver shape Dice {r['liver_shape_dice']:.3f}   {r['seconds_per_case']:.2f} s/case")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.phantom_population", description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=24, help="default training cases to render (default 24)")
    p.add_argument("--seed", type=int, default=7, help="phantom seed (default 7)")
    p.add_argument("--no-baseline", action="store_true", help="skip generator version 2")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--table", type=int, metavar="N", help="print docs/phantom.md's population table of N cases instead")
    p.add_argument("--spacing-scale", type=float, default=2.0, help="spacing scale for --table (default 2)")
    args = p.parse_args(argv)
    if args.table:
        print(population_table(args.table, args.seed, args.spacing_scale))
        return 0
    baseline = None if args.no_baseline else _baseline(args.cases, args.seed)
    ours = measure(args.cases, args.seed)
    if baseline:
        print(_report(f"v2 {BASELINE_COMMIT}", baseline))
    print(_report("this tree", ours))
    print("targets: liver sd >= {liver_median_sd:g}, kidney span >= {kidney_median_span:g}, "
          "aorta span >= {aorta_median_span:g}, Dice <= {liver_shape_dice:g}".format(**TARGETS))
    met = (ours["liver_median_sd"] >= TARGETS["liver_median_sd"]
           and ours["kidney_median_span"] >= TARGETS["kidney_median_span"]
           and ours["aorta_median_span"] >= TARGETS["aorta_median_span"]
           and ours["liver_shape_dice"] <= TARGETS["liver_shape_dice"])
    print(f"all four targets met: {met}")
    if baseline:
        print(f"time per case: {ours['seconds_per_case'] / baseline['seconds_per_case']:.2f}x generator v2 (target <= 2)")
    if args.out:
        args.out.write_text(json.dumps({"this_tree": ours, "baseline_v2": baseline}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
