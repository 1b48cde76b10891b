"""The voxel-MAE baseline decoder (facebookresearch/mae's decoder, in 3D): mask tokens, regress voxels."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .vit import Block, init_transformer_weights, sincos_pos_embed_3d


class VoxelDecoder(nn.Module):
    """[cls] + all N tokens (visible ones from the encoder, mask tokens elsewhere) -> p^3 voxels per token."""

    def __init__(self, grid: Sequence[int], patch_size: int, encoder_dim: int, dim: int = 528, depth: int = 8,
                 num_heads: int = 16, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.grid = tuple(grid)
        self.patch_size = patch_size
        self.decoder_embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed_3d(dim, self.grid))[None],
                                              requires_grad=False)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.decoder_blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, r) for r in rates])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, patch_size ** 3)
        init_transformer_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [B, 1 + n, C_enc], ids_restore [B, N] -> voxels per token [B, N, p^3], original order."""
        x = self.decoder_embed(latent)
        B, L, C = x.shape
        N = ids_restore.shape[1]
        x_ = torch.cat([x[:, 1:], self.mask_token.expand(B, N + 1 - L, -1)], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, C))  # unshuffle
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]
