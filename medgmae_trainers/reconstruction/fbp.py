"""Analytic reconstruction in torch: filtered back-projection (parallel beam) and FDK (cone beam).

Both use the discrete Ram-Lak ramp of Kak & Slaney (the spatial kernel h[0] = 1/4, h[odd n] =
-1/(pi n)^2, zero-padded to a power of two at least twice the detector row), as scikit-image's
`iradon` with `filter_name="ramp"` does, and a voxel-driven back-projection with linear
interpolation on the detector. The geometry is the projectors' (see `projectors.py`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .projectors import ConeBeamProjector, ParallelBeamProjector


def ramp_filter(projections: torch.Tensor) -> torch.Tensor:
    """Filter every detector row (the last axis) with the ramp; returns the same shape.

    The frequency response is 2 * Re(FFT(h)), i.e. twice the ramp (scikit-image's convention); the
    back-projections below use the matching constant pi / (2 V).
    """
    n = projections.shape[-1]
    size = max(64, 1 << math.ceil(math.log2(2 * n)))
    k = torch.arange(size, device=projections.device, dtype=torch.float64)
    dist = torch.minimum(k, size - k)  # circular distance to tap 0
    h = torch.where(dist.remainder(2) == 1, -1.0 / (math.pi * dist.clamp_min(1)) ** 2, torch.zeros_like(k))
    h[0] = 0.25
    response = (2 * torch.fft.fft(h).real).to(projections.dtype)
    spectrum = torch.fft.fft(projections, n=size, dim=-1) * response
    return torch.fft.ifft(spectrum, dim=-1).real[..., :n].contiguous()


def fbp_parallel(projector: ParallelBeamProjector, sinogram: torch.Tensor, views_per_chunk: int = 16) -> torch.Tensor:
    """Sinogram [V, D, n_det] -> [D, H, W], slice by slice."""
    D, H, W = projector.shape
    V, _, n = sinogram.shape
    filtered = ramp_filter(sinogram)
    dev, dt = sinogram.device, sinogram.dtype
    y = torch.arange(H, device=dev, dtype=torch.float64)[:, None] - (H - 1) / 2
    x = torch.arange(W, device=dev, dtype=torch.float64)[None, :] - (W - 1) / 2
    theta = torch.deg2rad(projector.angles_deg).to(dev)
    out = torch.zeros(D, H * W, device=dev, dtype=dt)
    for views in torch.arange(V, device=dev).split(views_per_chunk):
        c, s = torch.cos(theta[views])[:, None, None], torch.sin(theta[views])[:, None, None]
        k = (x * c - y * s + (n - 1) / 2).reshape(len(views), -1)     # [v, H*W] detector position
        k0 = torch.floor(k)
        frac = (k - k0).to(dt)
        for offset, weight in ((0, 1 - frac), (1, frac)):
            idx = (k0 + offset).long()
            valid = (idx >= 0) & (idx < n)
            vals = torch.gather(filtered[views], 2, idx.clamp(0, n - 1)[:, None, :].expand(-1, D, -1))
            out += (vals * (weight * valid)[:, None, :]).sum(0)
    return (out * (math.pi / (2 * V))).reshape(D, H, W)


def fdk_cone(projector: ConeBeamProjector, projections: torch.Tensor, views_per_chunk: int = 8) -> torch.Tensor:
    """FDK: cosine weighting, ramp along detector rows, distance-weighted back-projection. [V, nv, nu] -> [D, H, W]."""
    D, H, W = projector.shape
    V, nv, nu = projections.shape
    dso = projector.source_distance
    dev, dt = projections.device, projections.dtype
    u = torch.arange(nu, device=dev, dtype=torch.float64) - (nu - 1) / 2
    v = torch.arange(nv, device=dev, dtype=torch.float64) - (nv - 1) / 2
    cosine = (dso / torch.sqrt(dso ** 2 + u[None, :] ** 2 + v[:, None] ** 2)).to(dt)
    filtered = ramp_filter(projections * cosine)
    z = (torch.arange(D, device=dev, dtype=torch.float64) - (D - 1) / 2)[:, None, None]
    y = (torch.arange(H, device=dev, dtype=torch.float64) - (H - 1) / 2)[None, :, None]
    x = (torch.arange(W, device=dev, dtype=torch.float64) - (W - 1) / 2)[None, None, :]
    beta = torch.deg2rad(projector.angles_deg).to(dev)
    out = torch.zeros(D, H, W, device=dev, dtype=dt)
    for views in torch.arange(V, device=dev).split(views_per_chunk):
        c, s = torch.cos(beta[views])[:, None, None, None], torch.sin(beta[views])[:, None, None, None]
        mag = dso / (dso - (x * s + y * c))                                # DSO / U, [v, 1, H, W]
        uu = (x * c - y * s) * mag
        vv = z * mag                                                       # [v, D, H, W]
        # grid_sample (align_corners=True): cell i of n sits at -1 + 2 i / (n - 1)
        grid = torch.stack(torch.broadcast_tensors(uu / ((nu - 1) / 2), vv / ((nv - 1) / 2)), -1)
        grid = grid.reshape(len(views), D, H * W, 2).to(dt)
        vals = F.grid_sample(filtered[views][:, None], grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True)[:, 0].reshape(len(views), D, H, W)
        out += (vals * (mag ** 2).to(dt)).sum(0)
    return out * (math.pi / (2 * V))


def analytic_reconstruction(projector, projections: torch.Tensor) -> torch.Tensor:
    """FBP or FDK, whichever matches the projector's geometry."""
    if projector.geometry == "parallel":
        return fbp_parallel(projector, projections)
    return fdk_cone(projector, projections)
