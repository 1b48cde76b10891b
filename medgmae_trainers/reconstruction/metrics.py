"""Image quality against the ground truth: 3D PSNR and 3D SSIM, both at data range 1.

The reconstruction is clipped to [0, 1] (the pretraining window's range) before both metrics.
SSIM is scikit-image's `structural_similarity` on the whole 3D volume (`data_range=1`, its default
7-voxel uniform window, computed in float64).
"""
from __future__ import annotations

import numpy as np
import torch

DATA_RANGE = 1.0
SSIM_IMPLEMENTATION = "skimage.metrics.structural_similarity(data_range=1.0, 3D, 7^3 uniform window)"


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def psnr(reconstruction, truth) -> float:
    """10 log10(1 / MSE) over the 3D volume, reconstruction clipped to [0, 1]."""
    rec, gt = np.clip(_np(reconstruction), 0.0, DATA_RANGE), _np(truth)
    mse = float(np.mean((rec - gt) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(DATA_RANGE ** 2 / mse)


def ssim(reconstruction, truth) -> float:
    from skimage.metrics import structural_similarity

    rec, gt = np.clip(_np(reconstruction), 0.0, DATA_RANGE), _np(truth)
    return float(structural_similarity(gt, rec, data_range=DATA_RANGE))
