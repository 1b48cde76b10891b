"""Register one pair with a trained network, and score it: what validation, predict and evaluate share."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .metrics import dice_per_label, endpoint_error, mean_dice, nonpositive_jacobian_percent
from .warping import warp_image, warp_labels


@torch.no_grad()
def register(model: torch.nn.Module, moving: np.ndarray, fixed: np.ndarray, device) -> np.ndarray:
    """moving, fixed [z, y, x] float32 -> DDF [3, z, y, x] (voxels, float32)."""
    model.eval()
    m = torch.from_numpy(moving)[None, None].to(device)
    f = torch.from_numpy(fixed)[None, None].to(device)
    _, ddf = model(m, f)
    return ddf[0].float().cpu().numpy()


def apply(ddf: np.ndarray, image: np.ndarray | None = None, labels: np.ndarray | None = None):
    """(warped image, warped labels) with MONAI's Warp: trilinear for the image, nearest for labels."""
    d = torch.from_numpy(np.ascontiguousarray(ddf, dtype=np.float32))[None]
    img = None if image is None else warp_image(torch.from_numpy(image.astype(np.float32))[None, None], d)[0, 0].numpy()
    lab = None if labels is None else warp_labels(torch.from_numpy(labels.astype(np.int64))[None, None], d)[0, 0].numpy()
    return img, lab


def score_pair(ddf: np.ndarray, labels: Sequence[int], moving_seg: np.ndarray | None, fixed_seg: np.ndarray | None,
               spacing: Sequence[float], flow_true: np.ndarray | None = None,
               warped_seg: np.ndarray | None = None) -> dict:
    """Dice per structure (warped moving vs fixed), before and after; % det(J) <= 0; endpoint error (mm)
    inside the fixed image's labelled structures when the true displacement is known."""
    out: dict = {"nonpos_jacobian_pct": nonpositive_jacobian_percent(ddf)}
    if moving_seg is not None and fixed_seg is not None:
        if warped_seg is None:
            warped_seg = apply(ddf, labels=moving_seg)[1]
        scored = [l for l in labels if (fixed_seg == l).any() or (moving_seg == l).any()]
        before = dice_per_label(moving_seg, fixed_seg, scored)
        after = dice_per_label(warped_seg, fixed_seg, scored)
        out.update(dice=after, mean_dice=mean_dice(after), dice_before=before, mean_dice_before=mean_dice(before))
    if flow_true is not None:
        mask = fixed_seg > 0 if fixed_seg is not None else None
        out["epe_mm"] = endpoint_error(ddf, flow_true, spacing, mask)
        out["epe_mm_before"] = endpoint_error(np.zeros_like(flow_true), flow_true, spacing, mask)
    return out
