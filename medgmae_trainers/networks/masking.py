"""Random token masking (argsort of per-sample noise, as facebookresearch/mae) and patch <-> voxel maps."""
from __future__ import annotations

from typing import Sequence

import torch


def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """n = int(N * (1 - r)): every sample keeps exactly this many tokens (216 * 0.25 = 54, 512 * 0.25 = 128)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask ratio {mask_ratio} must be in [0, 1)")
    return max(1, int(num_tokens * (1 - mask_ratio)))


def random_masking(x: torch.Tensor, mask_ratio: float):
    """Keep a random subset of n = int(N * (1 - r)) tokens per sample, over the whole batch at once.

    x: [B, N, C]. Returns
        x_visible   [B, n, C]
        mask        [B, N]   float, 1 = masked, 0 = kept, original order
        ids_restore [B, N]   argsort of the shuffle: gather([visible, masked], ids_restore) = original order
        ids_keep    [B, n]   original indices of the kept tokens
    With mask_ratio 0 nothing is shuffled (the identity permutation), so unmasked encoding keeps token order.
    """
    B, N, C = x.shape
    n = num_visible(N, mask_ratio)
    if n == N:
        ids_shuffle = torch.arange(N, device=x.device).expand(B, N)
    else:
        noise = torch.rand(B, N, device=x.device)  # uniform noise; the smallest n are kept
        ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, C))
    mask = torch.ones(B, N, device=x.device)
    mask[:, :n] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_visible, mask, ids_restore, ids_keep


def token_mask_to_voxels(mask: torch.Tensor, grid: Sequence[int], patch_size: int) -> torch.Tensor:
    """[B, N] token mask (raster order over `grid`) -> bool [B, D, H, W] voxel mask, D = grid[0] * patch."""
    B = mask.shape[0]
    m = mask.reshape(B, *grid).bool()
    for axis in (1, 2, 3):
        m = m.repeat_interleave(patch_size, dim=axis)
    return m


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 1, D, H, W] -> [B, N, p^3], tokens in raster order, voxels in (z, y, x) order inside a patch."""
    B, C, D, H, W = imgs.shape
    p = patch_size
    x = imgs.reshape(B, C, D // p, p, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, gd, gh, gw, p, p, p, C
    return x.reshape(B, (D // p) * (H // p) * (W // p), p ** 3 * C)


def unpatchify(x: torch.Tensor, grid: Sequence[int], patch_size: int) -> torch.Tensor:
    """Inverse of `patchify` for one channel: [B, N, p^3] -> [B, 1, D, H, W]."""
    B = x.shape[0]
    p = patch_size
    gd, gh, gw = grid
    x = x.reshape(B, gd, gh, gw, p, p, p, 1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, 1, gd * p, gh * p, gw * p)
