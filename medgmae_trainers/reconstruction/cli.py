"""`medgmae_reconstruct`: sparse-view CT reconstruction with 3D Gaussians (3DGR-CT), started from
FBP points or from MedGMAE's decoder run zero-shot (paper sections 4.2 and 5.2, table 4).

    medgmae_reconstruct VOLUME --views 80 [--geometry parallel|cone] [--init fbp|medgmae|medgmae-star]
        [--checkpoint CKPT] [--compare] [--iterations 15000] [--device auto] [--out DIR]

Outputs in --out (default ./reconstruct_<volume name>):
    reconstruct.log, reconstruct.json       settings, the projections' description, per-init results
    curves.png                              PSNR/SSIM against iteration and fit time, every init
    table.md, table.csv                     table 4's columns, one row per init
    <init>/result.json                      that init's records (every --eval-every iterations)
    <init>/curves.png, slices.png           its curves; middle axial slices at the --snapshots
    <init>/reconstruction.nii.gz            the final rendered volume (window units, [0, 1] = HU -175..250)
    <init>/gaussians.pt                     the final Gaussians (means, scales, quats, intensities, shape)
Each <init>/ folder appears only when its fit has finished (built under a temporary name).
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgmae_plans.runtime.atomic import atomic_directory, save_torch_atomic, write_json_atomic, write_text_atomic
from medgmae_plans.runtime import (UserError, add_common_flags, check_range, check_writable, cli_entry, setup_run_log,
                                   write_run_json)
from preprocessing.validate import write_image

from ..pretrain.pretrained import check_normalisation
from ..run import DEVICE_HELP, resolve_device

from .fbp import analytic_reconstruction
from .fit import FitSettings, fit
from .gaussian_field import DensifyConfig, LearningRates
from .initialisers import INITS, initialise, load_decoder
from .metrics import SSIM_IMPLEMENTATION, psnr, ssim
from .plots import plot_curves, plot_slices
from .projectors import GEOMETRIES, make_projector
from .volume import PRETRAIN_SPACING, center_crop, load_volume, simulate_projections

NAME = "reconstruct"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medgmae_reconstruct", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("volume", help="CT image in HU (NIfTI/MHA/NRRD) or a preprocessed case (<case>.b2nd)")
    p.add_argument("--views", type=int, default=80, help="number of evenly spaced projection views, >= 1")
    p.add_argument("--geometry", choices=list(GEOMETRIES), default="parallel")
    p.add_argument("--init", choices=INITS, default="fbp")
    p.add_argument("--compare", action="store_true", help="run fbp, medgmae (and medgmae-star with --checkpoint-star)")
    p.add_argument("--checkpoint", help="pretraining checkpoint_final.pt: Gaussian decoder for medgmae "
                                        "(hierarchical for --init medgmae-star)")
    p.add_argument("--checkpoint-star", help="hierarchical-decoder checkpoint for medgmae-star under --compare")
    p.add_argument("--iterations", type=int, default=15000, help=">= 1")
    p.add_argument("--eval-every", type=int, default=50, help="PSNR/SSIM every N >= 1 iterations")
    p.add_argument("--snapshots", default="500,900,3400,15000", help="iterations whose slices are drawn")
    p.add_argument("--crop", type=int, nargs="+", metavar="N", help="central crop (D H W, or one edge for a cube), each >= 1")
    p.add_argument("--downsample", type=int, default=1,
                   help="average-pool the (cropped) volume by this factor >= 1 (a coarser voxel; the MedGMAE "
                        "windows are zoomed back by the same factor)")
    p.add_argument("--photons", type=float, default=0.0, help="Poisson noise with this many photons per ray, >= 0 (0: none)")
    p.add_argument("--num-points", type=int, default=4096, help="Gaussians of the fbp init, >= 1")
    p.add_argument("--max-gaussians", type=int, default=30000, help=">= 1")
    p.add_argument("--densify-until", type=int, default=None, help=">= 0 (default: 60%% of --iterations)")
    p.add_argument("--cutoff", type=float, default=3.0, help="render cutoff (Mahalanobis radius), > 0")
    p.add_argument("--views-per-step", type=int, default=None,
                   help="random views per iteration, >= 1 (default: all for parallel, 8 for cone)")
    p.add_argument("--source-distance", type=float, default=None, help="cone beam: source to axis, voxels, > 0")
    p.add_argument("--stop-at-targets", action="store_true", help="stop once PSNR 35 dB and SSIM 0.90 are reached")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, >= 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default ./reconstruct_<volume name>)")
    return add_common_flags(p)


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd", ".b2nd"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def prepare_volume(args) -> tuple[torch.Tensor, tuple[float, ...]]:
    """The ground truth [D, H, W] in [0, 1]: read, cropped, optionally average-pooled."""
    vol, spacing = load_volume(args.volume)
    if args.crop:
        if len(args.crop) not in (1, 3):
            raise UserError("--crop takes one edge or three (D H W)")
        vol = center_crop(vol, args.crop * 3 if len(args.crop) == 1 else args.crop)
    t = torch.from_numpy(np.ascontiguousarray(vol))
    if args.downsample > 1:
        f = args.downsample
        if f > min(t.shape):  # avg_pool3d's own error is a traceback
            raise UserError(f"--downsample {f}: larger than the volume's smallest axis ({tuple(t.shape)} voxels)")
        t = torch.nn.functional.avg_pool3d(t[None, None], f)[0, 0]
        spacing = tuple(s * f for s in spacing)
    if min(t.shape) < 4:
        raise UserError(f"{args.volume}: volume {tuple(t.shape)} is too small to reconstruct (at least 4 voxels an axis)")
    if float(t.max()) <= 0.05:  # the fbp init's air threshold: refused here, before the run's folder and log
        raise UserError(f"{args.volume}: nothing but air in the CT window (no voxel above 5 % of it, about -154 HU); "
                        "nothing to reconstruct")
    return t.contiguous(), spacing


def run_init(init: str, checkpoint, ctx: dict, args, out: Path, log) -> dict:
    """Initialise and fit one init; writes <out>/<init>/ atomically. Returns its summary."""
    device, projector, measured, truth, fbp = (ctx[k] for k in ("device", "projector", "measured", "truth", "fbp"))
    t0 = time.perf_counter()
    gaussians, info = initialise(init, fbp, checkpoint=checkpoint, num_points=args.num_points, cutoff=args.cutoff,
                                 device=device, seed=args.seed, zoom=ctx["zooms"].get(init, 1.0))
    init_s = time.perf_counter() - t0
    log.info(f"[{init}] {info['num_gaussians']} initial Gaussians ({init_s:.1f} s); intensity calibration "
             f"x{info['intensity_calibration']:.3f}")
    settings = ctx["fit_settings"]
    result = fit(gaussians, projector, measured, truth, settings, device=device, pbar=not args.no_pbar,
                 log=lambda m: log.info(f"[{init}] {m}"))
    records = result["records"]
    final = records[-1]
    summary = {
        "init": init, "init_info": info, "init_s": init_s, "fit_s": result["fit_s"], "eval_s": result["eval_s"],
        "iterations_run": final["iteration"],
        "psnr_init": records[0]["psnr"], "ssim_init": records[0]["ssim"],
        "psnr_final": final["psnr"], "ssim_final": final["ssim"], "psnr_best": max(r["psnr"] for r in records),
        "num_gaussians_final": final["num_gaussians"],
        "reached_psnr": result["reached"]["psnr"], "reached_ssim": result["reached"]["ssim"],
    }
    with atomic_directory(out / init, replace=True) as tmp:
        write_json_atomic(tmp / "result.json", {**summary, "records": records})
        title = f"{init}: {args.views} {args.geometry} views"
        plot_curves({init: records}, tmp / "curves.png", settings.psnr_target, settings.ssim_target, title)
        mid = truth.shape[0] // 2
        plot_slices(truth[mid].numpy(), fbp[mid].cpu().numpy(), {k: v.numpy() for k, v in result["snapshots"].items()},
                    tmp / "slices.png", title)
        save_torch_atomic(result["field"].state(), tmp / "gaussians.pt")
        _write_nifti(result["volume"].numpy(), ctx["spacing"], tmp / "reconstruction.nii.gz")
    return {**summary, "records": records}


def _write_nifti(vol: np.ndarray, spacing, path: Path) -> None:
    import SimpleITK as sitk

    from medgmae_plans.runtime.atomic import atomic_path

    img = sitk.GetImageFromArray(vol.astype(np.float32))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    with atomic_path(path) as tmp:
        write_image(img, tmp)


def _fmt_reached(r: dict | None, key: str) -> str:
    return "-" if r is None else (f"{r[key] / 60:.2f}" if key == "time_s" else str(r[key]))


def comparison_table(summaries: Sequence[dict], psnr_target: float, ssim_target: float) -> tuple[str, str]:
    """(markdown, csv) with table 4's columns. Time = fit minutes to reach PSNR target ('-' = not reached)."""
    head = ["Method", f"Time to PSNR {psnr_target:g} (min)", f"iter(P={psnr_target:g})", f"iter(S={ssim_target:.2f})",
            "PSNR(final)", "SSIM(final)", "fit time (min)", "iterations"]
    rows = [[s["init"], _fmt_reached(s["reached_psnr"], "time_s"), _fmt_reached(s["reached_psnr"], "iteration"),
             _fmt_reached(s["reached_ssim"], "iteration"), f"{s['psnr_final']:.2f}", f"{s['ssim_final']:.4f}",
             f"{s['fit_s'] / 60:.2f}", str(s["iterations_run"])] for s in summaries]
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    csv = ",".join(head) + "\n" + "".join(",".join(r) + "\n" for r in rows)
    return md, csv


def _check_ranges(args) -> None:
    """Every numeric flag, against the range its --help states, before the volume is read."""
    for flag, value, low in (("--views", args.views, 1), ("--iterations", args.iterations, 1),
                             ("--eval-every", args.eval_every, 1), ("--downsample", args.downsample, 1),
                             ("--photons", args.photons, 0), ("--num-points", args.num_points, 1),
                             ("--max-gaussians", args.max_gaussians, 1), ("--densify-until", args.densify_until, 0),
                             ("--views-per-step", args.views_per_step, 1), ("--threads", args.threads, 1)):
        check_range(flag, value, low)
    check_range("--cutoff", args.cutoff, 0, low_open=True)
    check_range("--source-distance", args.source_distance, 0, low_open=True)
    for edge in args.crop or ():
        check_range("--crop", edge, 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_ranges(args)
    try:
        snapshots = tuple(int(s) for s in args.snapshots.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--snapshots {args.snapshots!r}: expected comma-separated iterations") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    volume_path = Path(args.volume)
    out = check_writable(Path(args.out or f"reconstruct_{_stem(volume_path)}"))
    inits = [("fbp", None), ("medgmae", args.checkpoint)] if args.compare else [(args.init, args.checkpoint)]
    pretrain_spacing = {}
    if args.compare and args.checkpoint_star:
        inits.append(("medgmae-star", args.checkpoint_star))
    for init, ckpt in inits:
        if init != "fbp" and not ckpt:
            raise UserError(f"--init {init} needs --checkpoint" + (" (and medgmae-star --checkpoint-star)" if args.compare else ""))
        if ckpt:  # read once now, so a bad checkpoint is refused before any work
            meta = load_decoder(ckpt, init)[2]
            check_normalisation(meta, ckpt)
            pretrain_spacing[init] = float(meta.get("spacing", [PRETRAIN_SPACING])[0])
    truth, spacing = prepare_volume(args)
    # the decoder sees each window at its own pretraining spacing (3 mm for a 3d_lowres checkpoint)
    zooms = {init: spacing[0] / s for init, s in pretrain_spacing.items()}
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(out, "medgmae_reconstruct run")  # one writer per output folder
    log = setup_run_log(out, NAME, args.verbose)

    kwargs = {}
    if args.geometry == "cone" and args.source_distance:
        kwargs["source_distance"] = args.source_distance
    try:
        projector = make_projector(args.geometry, truth.shape, args.views, device=device, **kwargs)
    except ValueError as err:
        raise UserError(f"--geometry {args.geometry}: {err}") from None
    gen = torch.Generator().manual_seed(args.seed)
    measured = simulate_projections(projector, truth.to(device), args.photons, gen)
    fbp = analytic_reconstruction(projector, measured).float().cpu()
    views_per_step = args.views_per_step or (8 if args.geometry == "cone" else None)
    densify_until = args.densify_until if args.densify_until is not None else int(0.6 * args.iterations)
    fit_settings = FitSettings(iterations=args.iterations, eval_every=args.eval_every, snapshots=snapshots,
                               cutoff=args.cutoff, views_per_step=views_per_step, stop_at_targets=args.stop_at_targets,
                               seed=args.seed, lrs=LearningRates(),
                               densify=DensifyConfig(until=densify_until, max_gaussians=args.max_gaussians))
    geometry = {"geometry": args.geometry, "views": args.views, "sinogram_shape": list(projector.sinogram_shape),
                "angles": "0..180 deg" if args.geometry == "parallel" else "0..360 deg",
                **({"source_distance_voxels": projector.source_distance} if args.geometry == "cone" else {})}
    fbp_metrics = {"psnr": psnr(fbp, truth), "ssim": ssim(fbp, truth)}
    log.info(f"{volume_path}: volume {tuple(truth.shape)} at {spacing} mm; {args.views} {args.geometry} views "
             f"{'(noise-free)' if args.photons <= 0 else f'({args.photons:g} photons/ray)'}; "
             f"{'FBP' if args.geometry == 'parallel' else 'FDK'} PSNR {fbp_metrics['psnr']:.2f} dB, "
             f"SSIM {fbp_metrics['ssim']:.4f}; device {device}")
    ctx = {"device": device, "projector": projector, "measured": measured, "truth": truth, "fbp": fbp,
           "spacing": spacing, "fit_settings": fit_settings, "zooms": zooms}
    summaries = [run_init(init, ckpt, ctx, args, out, log) for init, ckpt in inits]

    plot_curves({s["init"]: s["records"] for s in summaries}, out / "curves.png", fit_settings.psnr_target,
                fit_settings.ssim_target, f"{_stem(volume_path)}: {args.views} {args.geometry} views")
    md, csv = comparison_table(summaries, fit_settings.psnr_target, fit_settings.ssim_target)
    write_text_atomic(out / "table.md", md)
    write_text_atomic(out / "table.csv", csv)
    log.info("\n" + md)
    settings = {k: v for k, v in vars(args).items()}
    settings.update(volume_shape=list(truth.shape), spacing_mm=list(spacing), projection=geometry,
                    fit=fit_settings, metrics={"psnr": "3D, reconstruction clipped to [0, 1], data range 1",
                                               "ssim": SSIM_IMPLEMENTATION})
    results = {"fbp": fbp_metrics, "runs": [{k: v for k, v in s.items() if k != "records"} for s in summaries]}
    write_run_json(out, NAME, settings, results)
    log.info(f"wrote {out}")
    return 0


main = cli_entry(main)

if __name__ == "__main__":
    raise SystemExit(main())
