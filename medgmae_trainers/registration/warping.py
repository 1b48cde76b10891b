"""Warping with MONAI's spatial transformer, and smooth random displacement fields.

Displacement fields (DDF) are `[B, 3, D, H, W]` in voxels: channel i is the displacement along
spatial axis i (z, y, x). A DDF `u` on the fixed grid maps fixed voxel x to moving position
x + u(x), so `warped(x) = moving(x + u(x))` (MONAI's `Warp`, align_corners=True voxel grid).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Warp

# MONAI says once per process that it uses torch's grid_sample (no compiled extension): that is intended.
warnings.filterwarnings("ignore", message="monai.networks.blocks.Warp: Using PyTorch native grid_sample")

def warp_image(image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """[B, C, D, H, W] images warped (trilinear, border padding) by `ddf` [B, 3, D, H, W]."""
    return Warp(mode="bilinear", padding_mode="border")(image, ddf)  # Warp caches its grid: one per call


def warp_labels(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Integer label maps [B, 1, D, H, W] warped by nearest neighbour (outside -> 0), same dtype."""
    return Warp(mode="nearest", padding_mode="zeros")(labels.to(ddf.dtype), ddf).round().to(labels.dtype)


def random_smooth_ddf(shape: tuple[int, int, int], rng: np.random.Generator, max_disp: float = 3.0,
                      control: int = 4) -> torch.Tensor:
    """A smooth random displacement `[1, 3, D, H, W]` (voxels) with |u| at most `max_disp`.

    Gaussian noise on a coarse control grid of `control`^3 points, upsampled by cubic-like smooth
    (trilinear of a twice-blurred grid) interpolation, then scaled so the largest component is
    `max_disp`. With max_disp small against the control spacing the map stays fold-free; the
    caller checks the Jacobian anyway.
    """
    coarse = torch.from_numpy(rng.standard_normal((1, 3, control, control, control))).float()
    # Upsample in two stages so the field has no visible trilinear kinks at the control points.
    mid = F.interpolate(coarse, size=tuple(max(2, s // 4) for s in shape), mode="trilinear", align_corners=True)
    ddf = F.interpolate(mid, size=tuple(shape), mode="trilinear", align_corners=True)
    return ddf * (max_disp / ddf.abs().max().clamp_min(1e-8))


def identity_grid(shape: tuple[int, int, int]) -> torch.Tensor:
    """Voxel coordinates `[1, 3, D, H, W]` (z, y, x): what MONAI's Warp adds the DDF to."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
