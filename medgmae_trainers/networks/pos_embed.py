"""Position embeddings for a token grid other than the pretraining crop's (e.g. 96^3 -> 96 x 192 x 192).

ViT3D's `pos_embed` is the fixed 3D sin-cos table of `sincos_pos_embed_3d`, never trained. For such a
table the right embedding on a new grid is the same function evaluated there: token (i, j, k) keeps
the vector it had in pretraining, and neighbours stay one grid step apart, so what attention learned
about relative offsets carries over (interpolating would instead squeeze the new grid into the old
coordinate range and change every offset). A table that is not the sin-cos one (learned embeddings)
is resized by trilinear interpolation, as MAE does for its learned 2D tables.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .vit import ViT3D, sincos_pos_embed_3d


def is_sincos(pos_embed: torch.Tensor, grid: Sequence[int], atol: float = 1e-5) -> bool:
    """Whether `pos_embed` [1, 1 + N, C] is the fixed sin-cos table of `grid`."""
    if pos_embed.shape[-1] % 6:  # no 3D sin-cos table has such a width (sincos_pos_embed_3d would raise)
        return False
    ref = torch.from_numpy(sincos_pos_embed_3d(pos_embed.shape[-1], grid))[None]
    return ref.shape == pos_embed.shape and torch.allclose(pos_embed.detach().float().cpu(), ref, atol=atol)


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """[1, 1 + prod(old_grid), C] -> [1, 1 + prod(new_grid), C]; the cls row is kept as it is.

    Sin-cos tables are recomputed on the new grid; other tables are interpolated trilinearly
    (align_corners=False, the grid cells' centres map onto each other).
    """
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if pos_embed.shape[1] != 1 + old_grid[0] * old_grid[1] * old_grid[2]:
        raise ValueError(f"pos_embed has {pos_embed.shape[1] - 1} tokens, grid {old_grid} needs "
                         f"{old_grid[0] * old_grid[1] * old_grid[2]}")
    if old_grid == new_grid:
        return pos_embed.detach().clone()
    C = pos_embed.shape[-1]
    if is_sincos(pos_embed, old_grid):
        return torch.from_numpy(sincos_pos_embed_3d(C, new_grid))[None].to(pos_embed)
    table = pos_embed[:, 1:].reshape(1, *old_grid, C).permute(0, 4, 1, 2, 3).float()
    table = F.interpolate(table, size=new_grid, mode="trilinear", align_corners=False)
    table = table.permute(0, 2, 3, 4, 1).reshape(1, -1, C).to(pos_embed)
    return torch.cat([pos_embed[:, :1].detach(), table], dim=1)


def set_token_grid(encoder: ViT3D, grid: Sequence[int]) -> ViT3D:
    """Adapt `encoder` (in place) to inputs of `grid` patches, e.g. (6, 12, 12) for 96 x 192 x 192 at patch 16."""
    new = resize_pos_embed(encoder.pos_embed.data, encoder.grid, grid)
    encoder.pos_embed = torch.nn.Parameter(new, requires_grad=encoder.pos_embed.requires_grad)
    encoder.grid = tuple(int(g) for g in grid)
    encoder.num_patches = int(new.shape[1] - 1)
    return encoder
