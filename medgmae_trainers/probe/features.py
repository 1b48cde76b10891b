"""Representations of a case as token-grid fields, and the trilinear sampling that takes them to voxels.

A representation turns a preprocessed image [D, H, W] into a field [C, gd, gh, gw]: one C-vector per
cell of `stride`^3 voxels, on a grid that covers the image after zero padding at the far end of each
axis. Voxel (i, j, k) sits at cell coordinate ((i + .5) / stride - .5, ...); `sample_field` reads a
field there by trilinear interpolation (border cells repeated), which is how features are "upsampled
to voxels". Sampling is linear, so a linear classifier applied to the field and then sampled gives
the same logits as the classifier applied to sampled features: the probe fits on sampled voxels and
segments a whole case by sampling its K logit channels only.

- `EncoderFeatures`: a ViT3D over sliding windows of the configuration's patch (step half a window,
  on the token lattice, so overlapping windows put their tokens on the same cells, where they are
  averaged); per token, the hidden states UNETR reads as skips (`unetr.used_skip_layers`) and the
  final normed tokens, concatenated.
- `RawPatches`: the baseline, raw intensities of each token-sized patch projected on the principal
  components of the training cases' patches, as many as the encoder's feature width (at most the
  patch's voxel count).
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..pretrain.pretrained import fit_token_grid
from ..networks.vit import ViT3D
from ..unetr import used_skip_layers


def cell_grid(shape: Sequence[int], stride: int, window: int | None = None) -> tuple[int, ...]:
    """Cells per axis covering `shape` voxels, and at least one `window` (in voxels, a multiple of stride)."""
    return tuple(max(math.ceil(int(s) / stride), (window or stride) // stride) for s in shape)


def padded(image: np.ndarray, grid: Sequence[int], stride: int, device) -> torch.Tensor:
    """[1, 1, *grid * stride] float32: the image, zero-padded at the far end of each axis."""
    vol = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=device)
    pad = []
    for s, g in zip(reversed(vol.shape), reversed(grid)):
        pad += [0, g * stride - s]
    return F.pad(vol, pad)[None, None]


def window_starts(cells: int, window: int, step: int) -> list[int]:
    """Window starts (in cells) along an axis: every `step`, and one flush with the end."""
    last = cells - window
    return sorted(set(range(0, last + 1, step)) | {last})


def sample_field(field: torch.Tensor, stride: int, points: torch.Tensor) -> torch.Tensor:
    """field [C, gd, gh, gw] read at voxel indices `points` [P, 3] (z, y, x): [P, C], trilinear."""
    extent = torch.tensor([g * stride for g in field.shape[1:]], dtype=torch.float32, device=field.device)
    norm = (points.to(field.device, torch.float32) + 0.5) * 2 / extent - 1   # align_corners=False
    grid = norm.flip(-1).reshape(1, -1, 1, 1, 3)                              # grid_sample wants (x, y, z)
    out = F.grid_sample(field[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(field.shape[0], -1).T


def upsample_field(field: torch.Tensor, stride: int, shape: Sequence[int]) -> torch.Tensor:
    """field [C, gd, gh, gw] at every voxel of `shape` (within the grid): [C, D, H, W], the values
    `sample_field` gives there. At an integer scale factor with align_corners=False, interpolation
    reads voxel i at cell (i + .5) / stride - .5, clamped to the grid: sample_field's border rule."""
    out = F.interpolate(field[None].float(), scale_factor=stride, mode="trilinear", align_corners=False)[0]
    return out[:, :int(shape[0]), :int(shape[1]), :int(shape[2])]


def voxel_points(shape: Sequence[int], device=None) -> torch.Tensor:
    """Every voxel index of `shape`, [D*H*W, 3], in raster order."""
    axes = [torch.arange(int(s), device=device) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


class EncoderFeatures:
    """A frozen ViT3D's UNETR skips and final tokens over sliding windows of `window`^3 voxels."""

    name = "encoder"

    def __init__(self, encoder: ViT3D, window: int, device="cpu", batch: int = 4):
        self.encoder = encoder.to(device).eval()
        self.stride = encoder.patch_embed.patch_size
        self.window = int(window)
        fit_token_grid(self.encoder, [self.window] * 3)
        self.taps = used_skip_layers(len(encoder.blocks), self.stride)
        self.width = encoder.embed_dim * (len(self.taps) + 1)
        self.device, self.batch = device, batch

    def fit(self, cases) -> None:
        """Nothing to fit: the encoder is frozen."""

    @torch.no_grad()
    def field(self, image: np.ndarray) -> torch.Tensor:
        cells, s = self.window // self.stride, self.stride
        grid = cell_grid(image.shape, s, self.window)
        vol = padded(image, grid, s, self.device)
        total = torch.zeros(self.width, *grid, device=self.device)
        count = torch.zeros(1, *grid, device=self.device)
        starts = list(itertools.product(*(window_starts(g, cells, max(1, cells // 2)) for g in grid)))
        for i in range(0, len(starts), self.batch):
            chunk = starts[i:i + self.batch]
            crops = torch.cat([vol[..., z * s:(z + cells) * s, y * s:(y + cells) * s, x * s:(x + cells) * s]
                               for z, y, x in chunk])
            tokens, hidden = self.encoder.forward_hidden(crops, self.taps)
            feats = torch.cat([*hidden, tokens], dim=-1).float()              # [b, N, width], raster order
            feats = feats.transpose(1, 2).reshape(len(chunk), self.width, cells, cells, cells)
            for f, (z, y, x) in zip(feats, chunk):
                total[:, z:z + cells, y:y + cells, x:x + cells] += f
                count[:, z:z + cells, y:y + cells, x:x + cells] += 1
        return total / count


class RawPatches:
    """Raw intensities in token-sized patches, projected on the training cases' principal components."""

    name = "raw"

    def __init__(self, stride: int, width: int, device="cpu"):
        self.stride, self.device = int(stride), device
        self.width = min(int(width), self.stride ** 3)
        self.mean = self.components = None

    def patches(self, image: np.ndarray) -> torch.Tensor:
        """[stride^3, gd, gh, gw]: each cell's voxels."""
        s = self.stride
        grid = cell_grid(image.shape, s)
        vol = padded(image, grid, s, self.device)[0, 0]
        cells = vol.reshape(grid[0], s, grid[1], s, grid[2], s).permute(1, 3, 5, 0, 2, 4)
        return cells.reshape(s ** 3, *grid)

    def fit(self, cases) -> None:
        x = torch.cat([self.patches(c.image).reshape(self.stride ** 3, -1).T for c in cases]).double()
        self.mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.components = vh[:self.width].float()                             # [width, stride^3]
        self.width = self.components.shape[0]

    @torch.no_grad()
    def field(self, image: np.ndarray) -> torch.Tensor:
        if self.components is None:
            raise RuntimeError("RawPatches.fit must see the training cases first")
        p = self.patches(image)
        flat = p.reshape(p.shape[0], -1) - self.mean.float()[:, None]
        return (self.components @ flat).reshape(self.width, *p.shape[1:])
