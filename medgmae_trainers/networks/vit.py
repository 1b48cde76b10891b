"""The 3D ViT encoder, in the style of facebookresearch/mae (models_mae.py).

`ViT3D` is the one encoder class of the toolkit: pretraining trains it, UNETR fine-tuning loads it.
Its state-dict keys are kept simple and stable:

    patch_embed.proj.{weight,bias}   Conv3d(in_chans, C, kernel=stride=patch)
    cls_token                        [1, 1, C]
    pos_embed                        [1, 1 + N, C]  fixed 3D sin-cos (cls at row 0), not trained
    blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*   (timm's names)
    norm.{weight,bias}

Token order is the raster order of the patch grid, z slowest and x fastest, i.e. what
`Conv3d(...).flatten(2)` produces; row 1 + t of `pos_embed` belongs to patch token t.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from medgmae_plans.configurations import VIT_B

from .masking import random_masking


def sincos_pos_embed_3d(embed_dim: int, grid: Sequence[int], cls_token: bool = True) -> np.ndarray:
    """Fixed 3D sin-cos position embeddings, [(1 if cls_token) + gd*gh*gw, embed_dim].

    A third of the channels encodes each axis (z, y, x), so `embed_dim` must be divisible by 6.
    The cls token's row is zeros, as in MAE.
    """
    if embed_dim % 6:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by 6 for 3D sin-cos embeddings")
    per_axis = embed_dim // 3
    omega = 1.0 / 10000 ** (np.arange(per_axis // 2, dtype=np.float64) / (per_axis / 2.0))
    coords = np.meshgrid(*[np.arange(g, dtype=np.float64) for g in grid], indexing="ij")
    parts = []
    for axis_coords in coords:  # z, y, x
        out = np.einsum("m,d->md", axis_coords.reshape(-1), omega)
        parts += [np.sin(out), np.cos(out)]
    emb = np.concatenate(parts, axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb.astype(np.float32)


class PatchEmbed3D(nn.Module):
    """[B, C_in, D, H, W] -> [B, N, C] with N = (D/p)(H/p)(W/p), raster order (z, y, x)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"crop size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = (img_size // patch_size,) * 3
        self.num_patches = int(np.prod(self.grid))
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample (the residual branch is dropped for the whole sample)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(B, L, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm's layout and parameter names)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linears with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ViT3D(nn.Module):
    """3D ViT encoder with a class token; in pretraining it sees only the visible tokens.

    Args:
        img_size: cubic crop edge in voxels (96 in the paper).
        patch_size: cubic patch edge (12 -> 512 tokens, 16 -> 216 tokens on 96^3).
        embed_dim, depth, num_heads, mlp_ratio, drop_path_rate: the usual ViT sizes.
    """

    def __init__(self, img_size: int = 96, patch_size: int = 16, in_chans: int = 1,
                 embed_dim: int = VIT_B["embed_dim"], depth: int = VIT_B["depth"], num_heads: int = VIT_B["num_heads"],
                 mlp_ratio: float = VIT_B["mlp_ratio"], drop_path_rate: float = 0.0):
        super().__init__()
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate)
        self.patch_embed = PatchEmbed3D(img_size, patch_size, in_chans, embed_dim)
        self.grid = self.patch_embed.grid
        self.num_patches = self.patch_embed.num_patches
        self.embed_dim = embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed_3d(embed_dim, self.grid))[None],
                                      requires_grad=False)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        # As MAE: the patch projection is initialised like a linear layer (Xavier on the flattened kernel).
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        init_transformer_weights(self.blocks)
        init_transformer_weights(self.norm)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.0):
        """Encode the visible tokens of `imgs`.

        imgs: [B, C_in, D, H, W]. Returns
            latent      [B, 1 + n, C]  (cls first, then the n = int(N * (1 - mask_ratio)) visible tokens)
            mask        [B, N]         1 = masked, 0 = visible, in the original token order
            ids_restore [B, N]         unshuffles [visible, masked] back to the original order
            ids_keep    [B, n]         original indices of the visible tokens, in latent order
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore, ids_keep = random_masking(x, mask_ratio)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore, ids_keep

    def forward_hidden(self, imgs: torch.Tensor, layers: Sequence[int] | None = None):
        """All tokens, no masking, for UNETR's skip connections.

        Returns (tokens [B, N, C] after the final norm, [hidden_l [B, N, C] for l in layers]), where
        hidden_l is the output of block l (1-based; default every block, like MONAI's ViT). The cls
        token is dropped from both so they reshape to [B, C, *grid] in raster order.
        """
        layers = list(range(1, len(self.blocks) + 1)) if layers is None else list(layers)
        if any(not 1 <= l <= len(self.blocks) for l in layers):
            raise ValueError(f"layers {layers} outside 1..{len(self.blocks)}")
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        hidden = {}
        for i, blk in enumerate(self.blocks, start=1):
            x = blk(x)
            if i in layers:
                hidden[i] = x[:, 1:]
        return self.norm(x)[:, 1:], [hidden[l] for l in layers]
