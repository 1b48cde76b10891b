"""Iterations and fit time to PSNR 35 dB for 3DGR-CT started from FBP points (the baseline) and from
MedGMAE's decoder zero-shot (ours), on a phantom volume, in one run; and the ratio.

    python -m benchmarks.reconstruct [--volume CASE.b2nd] [--checkpoint CKPT] [--crop 96] [--downsample 3]
                                     [--views 60] [--iterations 600] [--out DIR]

Defaults: the phantom's first preprocessed case (`medgmae_output/nnUNet_preprocessed/Dataset990_
AbdomenPhantom`, made by `python3 run.py demo`), its central 96^3 at 1.5 mm average-pooled to 32^3
(4.5 mm voxels: minutes on two cores; the decoder sees the FBP zoomed back to one 96^3 window), 60
noise-free parallel views, and the demo's tiny pretraining checkpoint. Both fits stop when PSNR 35 dB
and SSIM 0.90 are reached, or at --iterations; when a target is not reached, compare the PSNR at
equal iterations printed below. The paper reports 1.39x faster convergence (table 4).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medgmae_plans.runtime import UserError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASE = REPO / "medgmae_output/nnUNet_preprocessed/Dataset990_AbdomenPhantom/MedGMAEPlans_3d_fullres/phantom_000.b2nd"
DEFAULT_CKPT = REPO / "medgmae_output/nnUNet_results/MedGMAE_pretrain/gaussian_tiny_p16/checkpoint_final.pt"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volume", default=str(DEFAULT_CASE))
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--downsample", type=int, default=3)
    p.add_argument("--views", type=int, default=60)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--num-points", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "medgmae_output/benchmarks/reconstruct"))
    a = p.parse_args(argv)
    for path, what in ((a.volume, "volume"), (a.checkpoint, "checkpoint")):
        if not Path(path).is_file():
            raise SystemExit(f"benchmarks.reconstruct: {what} {path} missing (run `python3 run.py demo` and the "
                             f"tiny pretraining first, or pass --{what})")
    from medgmae_trainers.reconstruction.cli import main as reconstruct

    args = [a.volume, "--views", str(a.views), "--compare", "--checkpoint", a.checkpoint, "--crop", str(a.crop),
            "--downsample", str(a.downsample), "--iterations", str(a.iterations), "--eval-every", str(a.eval_every),
            "--num-points", str(a.num_points), "--stop-at-targets", "--threads", str(a.threads),
            "--snapshots", "0,100,300,600", "--out", a.out, "--no-pbar"]
    rc = reconstruct(args)
    if rc:
        return rc
    runs = {r["init"]: r for r in json.loads((Path(a.out) / "reconstruct.json").read_text())["results"]["runs"]}
    records = {k: json.loads((Path(a.out) / k / "result.json").read_text())["records"] for k in runs}
    print(f"\nvolume {a.volume} crop {a.crop}^3 / {a.downsample}, {a.views} parallel views, noise-free; "
          f"PSNR/SSIM 3D at data range 1")
    for name in ("fbp", "medgmae"):
        r = runs[name]
        hit = r["reached_psnr"]
        print(f"  {name:8s} init K={r['init_info']['num_gaussians']:5d}  PSNR init {r['psnr_init']:.2f}  "
              + (f"PSNR 35 dB at iteration {hit['iteration']} after {hit['time_s']:.1f} s" if hit else
                 f"PSNR 35 dB not reached in {r['iterations_run']} iterations ({r['fit_s']:.1f} s); "
                 f"best {r['psnr_best']:.2f} dB"))
    base, ours = runs["fbp"]["reached_psnr"], runs["medgmae"]["reached_psnr"]
    if base and ours:
        print(f"  ratio fbp/medgmae: iterations {base['iteration'] / ours['iteration']:.2f}x, "
              f"time {base['time_s'] / max(ours['time_s'], 1e-9):.2f}x  (paper: 1.39x)")
    else:
        common = sorted(set(r["iteration"] for r in records["fbp"]) & set(r["iteration"] for r in records["medgmae"]))
        for it in [i for i in common if i % 100 == 0 or i == common[-1]]:
            f = next(r for r in records["fbp"] if r["iteration"] == it)
            m = next(r for r in records["medgmae"] if r["iteration"] == it)
            print(f"  iteration {it:5d}: PSNR fbp {f['psnr']:.2f} (fit {f['time_s']:.1f} s)  medgmae {m['psnr']:.2f} "
                  f"(fit {m['time_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:
        sys.exit(f"benchmarks.reconstruct: {err}")
