"""Has a pretraining run learned structure? Masked MSE of checkpoints vs a trivial floor and a Gaussian ceiling.

    python -m benchmarks.pretrain_quality CKPT [CKPT ...] [-d Phantom] [--images PhantomUnlabeled]
                                          [--crops 16] [--seed 999] [--fit-steps 300] [--fit-lr 0.01]
                                          [--snapshot PATH.png] [--threads N]

For every checkpoint (latest or final; Gaussian, hierarchical or voxel decoder) it predicts the masked
voxels of the same crops under the same masks, and prints per checkpoint

    ours       the decoder's masked MSE
    baseline   each masked voxel at the mean of the crop's visible voxels: what a model that learned
               only intensity levels gets
    ceiling    the direct fit: the checkpoint's own K Gaussians fitted to each crop's masked voxels
               (the answer, which the decoder never sees), i.e. what the representation can reach
    ours/base  below 1 means the model uses what it sees; docs/results.md gives the tiny preset's
    ours/ceil  and  gap = (baseline - ours) / (baseline - ceiling), where ours lies between the two
               (0 = no better than the baseline, 1 = as good as the direct fit)

The direct fit (Gaussian and hierarchical decoders) uses the decoder's own parametrisation: its raw
head outputs (for MedGMAE* also each level's pre-tanh residuals), turned into Gaussians by the decoder's
own functions and rendered by `renderer_cupy.render_gaussians` with the checkpoint's K, max scale and
render cutoff. It starts from the decoder's prediction for the crop and takes --fit-steps Adam steps
(default 300, learning rate --fit-lr 1e-2, default betas) on those raw parameters, minimising the
crop's masked MSE; each crop is fitted on its own (the loss sums the per-crop MSEs, and Adam's
per-parameter steps do not couple crops). The ceiling is the best iterate per crop, start included,
so it is never above ours, and with 0 steps it is ours exactly. --fit-steps 0 leaves the column out.

A voxel-decoder checkpoint has no Gaussians of its own: its ceiling is that of the first Gaussian
checkpoint of the same call with the same crops and masks (configuration, crop size, patch size and
mask ratio; the masks are compared), else "-". The footnote names the checkpoint it came from.

--snapshot PATH.png draws, for the first checkpoint given and the crop of most contrast (crop 0 for a
voxel checkpoint), the middle axial slice of the input, the masked input, the decoder's render and
the direct fit's render (both over all voxels, as `PretrainModel.reconstruct` does), so organ
outlines show or do not.

The crops come from the named datasets' preprocessed cases of the checkpoint's configuration, cut with another sampling seed than
pretraining's 41 and without augmentation. They are not held-out cases: the pretraining pool is all
of them. The masks are drawn from a fixed seed, so runs compare like for like.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from medgmae_plans.configurations import DEFAULT_CONFIGURATION
from medgmae_plans.runtime import check_range, cli_entry
from medgmae_trainers.networks import token_mask_to_voxels
from medgmae_trainers.pretrain.model import load_pretrain_model, visible_mean_mse
from preprocessing.pretrain_sampling import CropChunks, SamplingConfig
from renderer_cupy import render_gaussians

MASK_SEED = 0
FIT_STEPS, FIT_LR = 300, 1e-2
GAUSSIAN_DECODERS = ("gaussian", "hierarchical")
BATCH = 4  # crops per forward pass; the masks depend on it (one draw per batch), so every pass uses it


def evaluation_crops(cases, crop_size: int, n: int, seed: int, per_case: int = 4) -> torch.Tensor:
    """n crops [n, 1, S, S, S], `per_case` per loaded case, from the sampling stream of `seed`."""
    chunks = CropChunks(cases, SamplingConfig(crop_size=crop_size, sub_crops=per_case, augment=False), seed=seed)
    return torch.cat([torch.from_numpy(chunks[i]) for i in range(-(-n // per_case))])[:n].float()


def crop_mse(pred: torch.Tensor, x: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE of each crop [B]. pred, x [B, 1, D, H, W]; voxel_mask bool [B, D, H, W] (True = masked)."""
    m = voxel_mask.to(pred.dtype)
    return ((pred[:, 0] - x[:, 0]) ** 2 * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1.0)


def crop_average(values: torch.Tensor) -> float:
    """The mean of per-crop values [n], summed in double precision (every column is averaged alike)."""
    return sum(values.tolist()) / len(values)


@torch.no_grad()
def masked_errors(model, crops: torch.Tensor, batch: int = BATCH) -> tuple[float, float]:
    """(model's masked MSE, visible-mean baseline's masked MSE), each averaged over the crops [n, 1, D, H, W]."""
    torch.manual_seed(MASK_SEED)
    ours, base = [], []
    for i in range(0, len(crops), batch):
        x = crops[i:i + batch]
        out = model(x)
        ours.append(crop_mse(out["pred"], x, out["voxel_mask"]))
        base += [visible_mean_mse(x[b:b + 1], out["voxel_mask"][b:b + 1]) for b in range(len(x))]
    return crop_average(torch.cat(ours)), sum(base) / len(base)


@torch.no_grad()
def decoder_raw(model, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(the decoder's raw Gaussian parameters for x [B, 1, D, H, W], voxel mask bool [B, D, H, W]).

    The encoder draws the mask from torch's generator exactly as `PretrainModel.forward` does, so
    under the same seed and batches the masks (and the prediction) are those of `masked_errors`."""
    enc = model.encoder
    latent, mask, _, ids_keep = enc(x, model.mask_ratio)
    return model.decoder.raw_gaussians(latent, ids_keep), token_mask_to_voxels(mask, enc.grid,
                                                                                 enc.patch_embed.patch_size)


def render_raw(model, raw: dict[str, torch.Tensor], shape, voxel_mask=None) -> torch.Tensor:
    """Render raw decoder parameters (each [B, ...]) as the model does: [B, 1, *shape]; 0 outside voxel_mask."""
    g = model.decoder.gaussians_from_raw(raw)
    return render_gaussians(g["means"], g["scales"], g["quats"], g["intensities"], tuple(shape),
                            mask=voxel_mask, cutoff=model.render_cutoff, backend=model.render_backend)


def _keep_better(best: dict, raw: dict, better: torch.Tensor) -> dict:
    """Per crop, raw's parameters where `better` [B] (bool), else best's."""
    return {k: torch.where(better.view(-1, *[1] * (v.dim() - 1)), raw[k].detach(), v) for k, v in best.items()}


def fit_gaussians(model, raw0: dict, x: torch.Tensor, voxel_mask: torch.Tensor, steps: int, lr: float):
    """Direct fit of raw parameters to x's masked voxels, from raw0. x [B, 1, D, H, W], voxel_mask [B, D, H, W].

    Returns (start MSE [B], best MSE [B], best raw parameters): `steps` Adam updates, `steps + 1`
    evaluations; the best iterate per crop, so the fit is never worse than its start."""
    raw = {k: v.detach().clone().requires_grad_(True) for k, v in raw0.items()}
    opt = torch.optim.Adam(raw.values(), lr=lr)
    best = {k: v.detach().clone() for k, v in raw.items()}
    start = best_mse = None
    for step in range(steps + 1):
        mse = crop_mse(render_raw(model, raw, x.shape[2:], voxel_mask), x, voxel_mask)
        if start is None:
            start, best_mse = mse.detach().clone(), mse.detach().clone()
        better = mse.detach() < best_mse
        best, best_mse = _keep_better(best, raw, better), torch.minimum(best_mse, mse.detach())
        if step < steps:
            opt.zero_grad()
            mse.sum().backward()  # a sum: each crop's parameters get only their own crop's gradient
            opt.step()
    return start, best_mse, best


def direct_fit(model, crops: torch.Tensor, steps: int = FIT_STEPS, lr: float = FIT_LR, batch: int = BATCH) -> dict:
    """The direct fit on every crop [n, 1, D, H, W], under `masked_errors`' masks. Returns a dict of
    start, fitted [n] (masked MSE), voxel_mask bool [n, D, H, W], raw0, raw (raw parameters [n, ...])."""
    torch.manual_seed(MASK_SEED)
    parts = []
    for i in range(0, len(crops), batch):
        x = crops[i:i + batch]
        raw0, voxel_mask = decoder_raw(model, x)
        start, fitted, raw = fit_gaussians(model, raw0, x, voxel_mask, steps, lr)
        parts.append(dict(start=start, fitted=fitted, voxel_mask=voxel_mask, raw0=raw0, raw=raw))
    cat = lambda key: torch.cat([p[key] for p in parts])  # noqa: E731
    return {"start": cat("start"), "fitted": cat("fitted"), "voxel_mask": cat("voxel_mask"),
            "raw0": {k: torch.cat([p["raw0"][k] for p in parts]) for k in parts[0]["raw0"]},
            "raw": {k: torch.cat([p["raw"][k] for p in parts]) for k in parts[0]["raw"]}}


@torch.no_grad()
def voxel_masks(model, crops: torch.Tensor, batch: int = BATCH) -> torch.Tensor:
    """The masks [n, D, H, W] `masked_errors` draws for this model (to match a voxel model to a Gaussian ceiling)."""
    torch.manual_seed(MASK_SEED)
    enc = model.encoder
    return torch.cat([token_mask_to_voxels(enc(crops[i:i + batch], model.mask_ratio)[1], enc.grid,
                                           enc.patch_embed.patch_size) for i in range(0, len(crops), batch)])


def _one(raw: dict, i: int) -> dict:
    """Crop i's raw parameters, batch of one."""
    return {k: v[i:i + 1] for k, v in raw.items()}


@torch.no_grad()
def write_snapshot(model, crops: torch.Tensor, fit: dict | None, out_png: Path, title: str) -> int:
    """Middle slice of one crop: input, masked input, decoder render and (Gaussian decoders) the direct
    fit's render; returns the crop's index. With a fit the crop is the one of most contrast (largest
    intensity sd), so organ outlines are there to see or miss; without one, crop 0 (its mask is the
    first batch's draw).

    `plots.plot_snapshot` draws one prediction and a composite; this picture needs two renders side by
    side, so it shares that module's panels and saving instead."""
    from medgmae_trainers.pretrain.plots import _pyplot, grey_slices, save_figure

    shape = crops.shape[2:]
    if fit is not None:
        i = int(crops.flatten(1).std(1).argmax())
        mask, decoder = fit["voxel_mask"][i], render_raw(model, _one(fit["raw0"], i), shape)[0, 0]
    else:
        i = 0
        torch.manual_seed(MASK_SEED)
        out = model.reconstruct(crops[:BATCH])
        mask, decoder = out["voxel_mask"][0], out["pred"][0, 0]
    x = crops[i, 0]
    panels = [("input", x), ("masked input", torch.where(mask, float("nan"), x)), ("decoder render", decoder)]
    if fit is not None:
        panels.append(("direct fit render", render_raw(model, _one(fit["raw"], i), shape)[0, 0]))
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    grey_slices(axes, [(name, vol[vol.shape[0] // 2].numpy()) for name, vol in panels])
    save_figure(fig, out_png, f"{title}, crop {i}")
    return i


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pretrain_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint_final.pt or checkpoint_latest.pt files")
    p.add_argument("-d", "--dataset", action="append", default=[], help="preprocessed labelled dataset (default Phantom)")
    p.add_argument("--images", action="append", default=[], help="preprocessed unlabelled collection")
    p.add_argument("--crops", type=int, default=16, help="evaluation crops, >= 1 (default 16)")
    p.add_argument("--seed", type=int, default=999, help="crop sampling seed (pretraining uses 41)")
    p.add_argument("--fit-steps", type=int, default=FIT_STEPS,
                   help=f"Adam steps of the direct fit, >= 0; 0: no ceiling column (default {FIT_STEPS})")
    p.add_argument("--fit-lr", type=float, default=FIT_LR,
                   help=f"Adam learning rate of the direct fit on the raw parameters, in (0, 1] (default {FIT_LR:g})")
    p.add_argument("--snapshot", metavar="PATH.png", help="picture of one crop under the first checkpoint")
    p.add_argument("--threads", type=int, help="torch (and CPU renderer) threads, >= 1 (default torch's)")
    p.add_argument("--json", metavar="OUT.json", help="also write the table's numbers (checkpoint, decoder, step, "
                                                      "ours, baseline, ceiling) there, atomically")
    return p


def _check(args) -> None:
    """Every numeric flag's range before any work (the rules --help states)."""
    check_range("--crops", args.crops, 1)
    check_range("--fit-steps", args.fit_steps, 0)
    check_range("--fit-lr", args.fit_lr, 0, 1, low_open=True)
    check_range("--threads", args.threads, 1)
    from medgmae_plans.runtime import check_writable

    for what, path in (("snapshot folder", args.snapshot), ("JSON folder", args.json)):
        if path is not None:
            check_writable(Path(path).resolve().parent, what)


def _cell(value, width: int, fmt: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{fmt}}"


def _row(path, meta, ours, base, ceil) -> str:
    """One table line; ceiling-derived cells are '-' without a ceiling."""
    gap = None if ceil is None or base == ceil else (base - ours) / (base - ceil)
    return (f"{str(path)[-60:]:<60} {meta['decoder_type']:<12} {meta.get('step', -1):>6} {ours:8.4f} {base:8.4f} "
            f"{_cell(ceil, 8, '.4f')} {ours / base:9.2f} {_cell(None if not ceil else ours / ceil, 9, '.2f')} "
            f"{_cell(gap, 5, '.2f')}")


def _main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from medgmae_plans.runtime.paths import ensure_nnunet_env
    from medgmae_trainers.pretrain.data import pretraining_cases

    ensure_nnunet_env()
    t0 = time.perf_counter()
    crops: dict[tuple[str, int], torch.Tensor] = {}  # by (configuration, crop size): the same crops for like runs
    ceilings: dict[tuple, tuple[str, torch.Tensor, float]] = {}  # by crops + masking: (source, masks, ceiling)
    rows = []
    for n, path in enumerate(args.checkpoints):
        model, meta = load_pretrain_model(path)
        key = (meta.get("configuration", DEFAULT_CONFIGURATION), int(meta["crop_size"][0]))
        if key not in crops:
            cases, _ = pretraining_cases(args.dataset or ["Phantom"], args.images, key[0])
            crops[key] = evaluation_crops(cases, key[1], args.crops, args.seed)
        mask_key = key + (model.encoder.patch_embed.patch_size, model.mask_ratio)
        ours, base = masked_errors(model, crops[key])
        fit = None
        if args.fit_steps and meta["decoder_type"] in GAUSSIAN_DECODERS:
            fit = direct_fit(model, crops[key], args.fit_steps, args.fit_lr)
            ceilings.setdefault(mask_key, (str(path), fit["voxel_mask"], crop_average(fit["fitted"])))
            rows.append((path, meta, ours, base, crop_average(fit["fitted"]), None))
        else:
            borrow = (mask_key, voxel_masks(model, crops[key])) if args.fit_steps else None
            rows.append((path, meta, ours, base, None, borrow))
        if n == 0 and args.snapshot:
            write_snapshot(model, crops[key], fit, Path(args.snapshot), f"{Path(path).parent.name}: middle slice")
    table = _print_table(rows, ceilings)
    if args.json:
        from medgmae_plans.runtime.atomic import write_json_atomic

        write_json_atomic(Path(args.json), {"rows": table, "crops": args.crops, "seed": args.seed,
                                            "fit_steps": args.fit_steps, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"({time.perf_counter() - t0:.1f} s; direct fit: {args.fit_steps} Adam steps, lr {args.fit_lr:g}"
          + (f"; snapshot {args.snapshot})" if args.snapshot else ")"))
    return 0


def _print_table(rows, ceilings) -> list[dict]:
    """Print the rows and return their numbers; a voxel row (borrow = (crop and masking key, its masks
    [n, D, H, W])) takes a Gaussian checkpoint's ceiling where crops and masks agree."""
    print(f"{'checkpoint':<60} {'decoder':<12} {'step':>6} {'ours':>8} {'baseline':>8} {'ceiling':>8} "
          f"{'ours/base':>9} {'ours/ceil':>9} {'gap':>5}")
    notes, table = [], []
    for path, meta, ours, base, ceil, borrow in rows:
        if borrow is not None and borrow[0] in ceilings:
            source, masks, value = ceilings[borrow[0]]
            if torch.equal(masks, borrow[1]):
                ceil = value
                notes.append(f"{str(path)[-60:]}: ceiling of {source}")
        print(_row(path, meta, ours, base, ceil))
        table.append({"checkpoint": str(path), "decoder": meta["decoder_type"], "step": meta.get("step"),
                      "ours": ours, "baseline": base, "ceiling": ceil})
    for note in notes:
        print(note)
    return table


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
