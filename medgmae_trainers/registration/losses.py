"""Training loss: MONAI's local NCC + diffusion regulariser (+ Dice of warped labels when they exist).

    L = w_ncc * LNCC(warped, fixed) + w_diff * Diffusion(ddf) + w_dice * DiceLoss(warp(onehot(moving_seg)), onehot(fixed_seg))

TransMorph's recipe (weights 1, 1, and 1 for the Dice term on OASIS). MONAI's LNCC returns -NCC,
so a perfect match gives -1. The labels are warped as one-hot maps with trilinear interpolation so
that the Dice term has a gradient; evaluation warps them by nearest neighbour instead.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss, DiffusionLoss, LocalNormalizedCrossCorrelationLoss

from .warping import warp_image


class RegistrationLoss(nn.Module):
    def __init__(self, num_labels: int, w_ncc: float = 1.0, w_diff: float = 1.0, w_dice: float = 1.0,
                 ncc_kernel: int = 9):
        super().__init__()
        self.num_labels, self.w_ncc, self.w_diff, self.w_dice = num_labels, w_ncc, w_diff, w_dice
        self.ncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=ncc_kernel, kernel_type="rectangular")
        self.diffusion = DiffusionLoss()
        self.dice = DiceLoss(include_background=False, reduction="mean")

    def _scored(self, seg: torch.Tensor) -> torch.Tensor:
        """[B, 1, ...] ids -> [B, ...] long; ids above the scored structures (e.g. IXI's non-VOI labels) -> 0."""
        seg = seg[:, 0].long()
        return torch.where((seg < 0) | (seg > self.num_labels), torch.zeros_like(seg), seg)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor, ddf: torch.Tensor,
                moving_seg: torch.Tensor | None = None, fixed_seg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """warped, fixed [B, 1, D, H, W]; ddf [B, 3, D, H, W]; segs [B, 1, D, H, W] int (ids 0..num_labels).

        Returns {"loss", "ncc", "diffusion"[, "dice"]}, the parts unweighted.
        """
        parts = {"ncc": self.ncc(warped, fixed), "diffusion": self.diffusion(ddf)}
        loss = self.w_ncc * parts["ncc"] + self.w_diff * parts["diffusion"]
        if self.w_dice > 0 and moving_seg is not None and fixed_seg is not None:
            k = self.num_labels + 1
            mov, fix = (F.one_hot(self._scored(seg), k).permute(0, 4, 1, 2, 3).to(ddf.dtype)
                        for seg in (moving_seg, fixed_seg))
            parts["dice"] = self.dice(warp_image(mov, ddf), fix)
            loss = loss + self.w_dice * parts["dice"]
        parts["loss"] = loss
        return parts
