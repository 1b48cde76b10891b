"""Network presets and the builder that turns (preset, decoder type, overrides) into modules.

    tiny   runs on two CPU cores in minutes (ViT 192 wide, 6 deep; 64 Gaussians of max scale 0.15:
           the render cost grows with the Gaussians' volume, and with the paper's 0.5 the tiny model
           learns crop-sized blurs whose rendering alone takes seconds per step on a CPU). The same
           choice measured best at `3d_lowres` (48^3 crops, patch 8; 1000 steps on the phantom;
           masked MSE / the visible-mean baseline's, `benchmarks.pretrain_quality`, docs/results.md):
           K=64 s=0.15 0.70, K=256 s=0.15 0.94, K=256 s=0.08 0.87, K=64 s=0.08 1.08 (voxel-MAE 0.59).
           More or smaller Gaussians need more steps than this budget to cover the crop.
    base   ViT-B encoder (768, 12 layers, 12 heads) with a 4-layer 384-wide decoder, 512 Gaussians
    paper  appendix tables 6-7: encoder 1536 wide, 12 layers, 16 heads, drop path 0.1;
           decoder 528 wide, 8 layers, 16 heads, 512 Gaussians, max scale 0.5

`render_cutoff` is `RENDER_CUTOFF` in every preset.
"""
from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn

from medgmae_plans.configurations import VIT_B

from .gaussian_decoder import GaussianDecoder, HierarchicalGaussianDecoder
from .vit import ViT3D
from .voxel_decoder import VoxelDecoder

DECODER_TYPES = ("gaussian", "hierarchical", "voxel")
# The paper's "2 sigma rule" (appendix 7.5): a Gaussian reaches the voxels within Mahalanobis
# distance 2 of its centre. Pretraining passes it to the renderer, whose own default (3.0) differs.
RENDER_CUTOFF = 2.0

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "encoder": dict(img_size=96, patch_size=16, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0,
                        drop_path_rate=0.0),
        "decoder": dict(dim=96, depth=2, num_heads=3, mlp_ratio=4.0, drop_path_rate=0.0),
        # MedGMAE*'s scale steps shrink with the max scale (0.02, 0.05 at 0.5).
        "gaussians": dict(num_gaussians=64, max_scale=0.15, multiplicities=(2, 4), delta_scales=(0.006, 0.015),
                          render_cutoff=RENDER_CUTOFF),
    },
    "base": {
        "encoder": dict(img_size=96, patch_size=16, **VIT_B, drop_path_rate=0.1),
        "decoder": dict(dim=384, depth=4, num_heads=12, mlp_ratio=4.0, drop_path_rate=0.0),
        "gaussians": dict(num_gaussians=512, max_scale=0.5, multiplicities=(2, 4), delta_scales=(0.02, 0.05),
                          render_cutoff=RENDER_CUTOFF),
    },
    "paper": {
        "encoder": dict(img_size=96, patch_size=16, embed_dim=1536, depth=12, num_heads=16, mlp_ratio=4.0,
                        drop_path_rate=0.1),
        "decoder": dict(dim=528, depth=8, num_heads=16, mlp_ratio=4.0, drop_path_rate=0.1),
        "gaussians": dict(num_gaussians=512, max_scale=0.5, multiplicities=(2, 4), delta_scales=(0.02, 0.05),
                          render_cutoff=RENDER_CUTOFF),
    },
}

# UNETR decoder width when fine-tuning an encoder of this preset; presets not named use the plans'
# (16). The decoder's full-resolution convolutions dominate CPU time; the tiny preset halves them.
UNETR_FEATURE_SIZE = {"tiny": 8}


def network_config(preset: str, *, patch_size: int | None = None, crop_size: int | None = None,
                   num_gaussians: int | None = None, max_scale: float | None = None) -> dict[str, Any]:
    """The preset's sizes with the command-line overrides applied (a plain, JSON-able dict)."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[preset])
    if patch_size is not None:
        cfg["encoder"]["patch_size"] = patch_size
    if crop_size is not None:
        cfg["encoder"]["img_size"] = crop_size
    if num_gaussians is not None:
        cfg["gaussians"]["num_gaussians"] = num_gaussians
    if max_scale is not None:
        cfg["gaussians"]["max_scale"] = max_scale
    cfg["gaussians"]["multiplicities"] = list(cfg["gaussians"]["multiplicities"])
    cfg["gaussians"]["delta_scales"] = list(cfg["gaussians"]["delta_scales"])
    return cfg


def build_networks(cfg: dict[str, Any], decoder_type: str) -> tuple[ViT3D, nn.Module]:
    """(encoder, decoder) for a config from `network_config`."""
    if decoder_type not in DECODER_TYPES:
        raise KeyError(f"unknown decoder {decoder_type!r}; expected one of {DECODER_TYPES}")
    encoder = ViT3D(**cfg["encoder"])
    dec, g = cfg["decoder"], cfg["gaussians"]
    if decoder_type == "voxel":
        decoder = VoxelDecoder(encoder.grid, encoder.patch_embed.patch_size, encoder.embed_dim, **dec)
    elif decoder_type == "gaussian":
        decoder = GaussianDecoder(encoder.grid, encoder.embed_dim, num_gaussians=g["num_gaussians"],
                                  max_scale=g["max_scale"], **dec)
    else:
        decoder = HierarchicalGaussianDecoder(encoder.grid, encoder.embed_dim, num_gaussians=g["num_gaussians"],
                                              max_scale=g["max_scale"], multiplicities=g["multiplicities"],
                                              delta_scales=g["delta_scales"], **dec)
    return encoder, decoder
