"""Where the fit starts: 3DGR-CT's FBP-guided points, or MedGMAE's decoder run zero-shot on the FBP.

Every initialiser returns Gaussians for the whole volume in normalised (z, y, x) coordinates:
    {"means" [K, 3], "scales" [K, 3], "quats" [K, 4], "intensities" [K]}
and ends with the same calibration: one least-squares factor on all intensities so the rendered
volume best matches the FBP volume (the decoder was trained at render cutoff 2 and the fit may
render at another; a single scalar keeps the comparison between initialisations fair).

`fbp`           (3DGR-CT's baseline) points drawn from voxels above an air threshold with probability
                proportional to the FBP's gradient magnitude plus its mean (so flat organs get points
                too), jittered inside their voxel; isotropic scales from the root mean squared
                distance to the 3 nearest neighbours; identity rotations; intensities = FBP values.
`medgmae`       the FBP volume, clipped to [0, 1], is padded (with 0, the window's air) to a multiple
`medgmae-star`  of the decoder's crop (96^3) and cut into non-overlapping windows; each window goes
                through the encoder with every token visible (mask ratio 0) and the decoder, whose
                Gaussians (normalised to the window) are mapped to volume coordinates: positions
                shifted and rescaled by window / volume size, scales rescaled by the same ratio. The
                Gaussians of all windows are concatenated; those centred in the padding are dropped.
                `medgmae` needs a Gaussian-decoder checkpoint, `medgmae-star` a hierarchical one
                (MedGMAE*, all levels kept).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medgmae_plans.runtime import UserError

INITS = ("fbp", "medgmae", "medgmae-star")
DECODER_FOR_INIT = {"medgmae": "gaussian", "medgmae-star": "hierarchical"}


def _render(g: dict[str, torch.Tensor], shape, cutoff: float, backend: str) -> torch.Tensor:
    from renderer_cupy import render_gaussians

    return render_gaussians(g["means"][None], g["scales"][None], g["quats"][None], g["intensities"][None],
                            tuple(shape), cutoff=cutoff, backend=backend)[0, 0]


@torch.no_grad()
def calibrate_intensities(g: dict[str, torch.Tensor], target: torch.Tensor, cutoff: float,
                          backend: str = "auto") -> tuple[dict[str, torch.Tensor], float]:
    """Scale all intensities by alpha = <r, t> / <r, r> (r the render, t the FBP). Returns (g, alpha)."""
    r = _render(g, target.shape, cutoff, backend).double()
    t = target.to(r.device).double()
    denom = float((r * r).sum())
    alpha = float((r * t).sum()) / denom if denom > 0 else 1.0
    return {**g, "intensities": g["intensities"] * alpha}, alpha


@torch.no_grad()
def fbp_init(fbp: torch.Tensor, num_points: int = 4096, air_threshold: float = 0.05, seed: int = 0) -> dict:
    """3DGR-CT's initialisation from an FBP volume [D, H, W] (see the module docstring)."""
    from scipy.spatial import cKDTree

    vol = fbp.detach().float().cpu().numpy()
    shape = np.array(vol.shape, dtype=np.float64)
    grad = np.sqrt(sum(g ** 2 for g in np.gradient(vol)))
    candidates = np.flatnonzero(vol > air_threshold)
    if candidates.size == 0:
        raise UserError(f"the FBP reconstruction has no voxel above the air threshold {air_threshold}")
    weight = grad.reshape(-1)[candidates]
    weight = weight + weight.mean() + 1e-12
    rng = np.random.default_rng(seed)
    n = min(num_points, candidates.size)
    chosen = rng.choice(candidates, size=n, replace=False, p=weight / weight.sum())
    idx = np.stack(np.unravel_index(chosen, vol.shape), -1).astype(np.float64)
    pos_vox = idx + rng.uniform(0.0, 1.0, size=idx.shape)           # voxel i spans [i, i + 1)
    dist, _ = cKDTree(pos_vox).query(pos_vox, k=min(4, n))
    sigma_vox = np.sqrt((dist[:, 1:] ** 2).mean(-1)) if n > 1 else np.full(n, 1.0)
    sigma_vox = np.clip(sigma_vox, 0.5, 8.0)
    means = pos_vox / shape
    scales = sigma_vox[:, None] / shape[None, :]
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))
    intensities = vol.reshape(-1)[chosen]
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return {"means": as_t(means), "scales": as_t(scales), "quats": as_t(quats), "intensities": as_t(intensities)}


def load_decoder(checkpoint: str | Path, init: str, device="cpu"):
    """(encoder, decoder, metadata) of a pretraining checkpoint, checked against the init's decoder type."""
    from medgmae_trainers.pretrain.model import load_pretrain_model

    model, meta = load_pretrain_model(checkpoint, device)  # bad files are one-line UserErrors
    wanted = DECODER_FOR_INIT[init]
    if meta.get("decoder_type") != wanted:
        raise UserError(f"{checkpoint}: has a {meta.get('decoder_type')!r} decoder; --init {init} needs a "
                        f"{wanted!r} decoder checkpoint (pretrain with --decoder {wanted})")
    return model.encoder, model.decoder, meta


@torch.no_grad()
def medgmae_init(fbp: torch.Tensor, encoder, decoder, device="cpu", zoom: float = 1.0) -> dict:
    """Zero-shot Gaussians for a volume [D, H, W] from its FBP (see the module docstring).

    `zoom` > 1 resizes the FBP (trilinear) before windowing, for a volume coarser than the
    pretraining spacing (zoom = its spacing / 1.5 mm); the Gaussians come back in the normalised
    coordinates of the zoomed grid, which are those of the original volume.
    """
    crop = int(encoder.config["img_size"])
    if zoom != 1.0:
        size = [max(1, int(round(n * zoom))) for n in fbp.shape]
        fbp = torch.nn.functional.interpolate(fbp.detach().float().cpu()[None, None], size=size, mode="trilinear",
                                              align_corners=False)[0, 0]
    shape = np.array(fbp.shape)
    padded = -(-shape // crop) * crop
    before = (padded - shape) // 2                 # the volume sits centred in the padded grid
    vol = torch.zeros(tuple(padded), dtype=torch.float32)
    vol[tuple(slice(b, b + n) for b, n in zip(before, shape))] = fbp.detach().float().cpu().clamp(0, 1)
    parts = {k: [] for k in ("means", "scales", "quats", "intensities")}
    grid = [range(0, int(p), crop) for p in padded]
    for oz in grid[0]:
        for oy in grid[1]:
            for ox in grid[2]:
                window = vol[oz:oz + crop, oy:oy + crop, ox:ox + crop][None, None].to(device)
                latent, _, _, ids_keep = encoder(window, 0.0)      # every token visible, raster order
                g = decoder(latent, ids_keep)
                offset = torch.tensor([oz, oy, ox], dtype=torch.float32) - torch.as_tensor(before, dtype=torch.float32)
                size = torch.as_tensor(shape, dtype=torch.float32)
                parts["means"].append((g["means"][0].float().cpu() * crop + offset) / size)
                parts["scales"].append(g["scales"][0].float().cpu() * crop / size)
                parts["quats"].append(g["quats"][0].float().cpu())
                parts["intensities"].append(g["intensities"][0].float().cpu())
    out = {k: torch.cat(v) for k, v in parts.items()}
    inside = ((out["means"] >= 0) & (out["means"] <= 1)).all(-1)
    return {k: v[inside] for k, v in out.items()}


def initialise(init: str, fbp: torch.Tensor, *, checkpoint=None, num_points: int = 4096, cutoff: float = 3.0,
               device="cpu", seed: int = 0, zoom: float = 1.0) -> tuple[dict, dict]:
    """(Gaussians, info) for `init` in INITS; info records what was done (counts, calibration)."""
    if init == "fbp":
        g = fbp_init(fbp, num_points=num_points, seed=seed)
        info = {"num_points_requested": num_points}
    elif init in DECODER_FOR_INIT:
        if checkpoint is None:
            raise UserError(f"--init {init} needs --checkpoint (a {DECODER_FOR_INIT[init]}-decoder checkpoint_final.pt)")
        encoder, decoder, meta = load_decoder(checkpoint, init, device)
        g = medgmae_init(fbp, encoder, decoder, device, zoom)
        if g["means"].shape[0] == 0:
            raise UserError(f"{checkpoint}: the decoder put no Gaussian inside the volume")
        info = {"checkpoint": str(checkpoint), "preset": meta.get("preset"), "decoder_type": meta.get("decoder_type"),
                "gaussians_per_window": int(meta.get("num_gaussians", 0)), "pretrain_step": meta.get("step"),
                "window_zoom": zoom}
    else:
        raise UserError(f"unknown --init {init!r}; expected one of {', '.join(INITS)}")
    g, alpha = calibrate_intensities(g, fbp.detach().float().cpu(), cutoff, backend="cpu")
    info.update(num_gaussians=int(g["means"].shape[0]), intensity_calibration=alpha)
    return g, info
