"""UNETR around the toolkit's ViT3D encoder, built from MONAI's UNETR blocks.

`build_unetr` is the `network_class_name` the MedGMAE plans name: nnU-Net calls it as
`build_unetr(input_channels=..., num_classes=..., deep_supervision=..., **arch_kwargs)`, with the
MONAI UNETR keywords of the plans (`img_size, patch_size, hidden_size, mlp_dim, num_layers,
num_heads, feature_size, norm_name, dropout_rate`). The encoder is our `ViT3D`, so a pretraining
checkpoint's encoder state dict loads one-to-one under the prefix `encoder.`; the convolutional
decoder is made of MONAI's `UnetrBasicBlock` / `UnetrPrUpBlock` / `UnetrUpBlock` / `UnetOutBlock`
(kernel 3, instance norm, residual blocks: MONAI UNETR's choices).

Skip levels (g = token grid = img_size / patch_size, D = img_size):

    patch 16 (MONAI's UNETR):  image -> D       z_a -> 8g = D/2   z_b -> 4g = D/4   z_c -> 2g = D/8
                               tokens (final, normed) at g; decoder g -> 2g -> 4g -> 8g -> 16g, x2 each
    patch 12:                  image -> D       z_b -> 4g = D/3   z_c -> 2g = D/6
                               tokens at g; decoder g -> 2g -> 4g -> 12g (x2, x2, x3)
    patch 8 (3d_lowres):       image -> D       z_b -> 4g = D/2   z_c -> 2g = D/4
                               tokens at g; decoder g -> 2g -> 4g -> 8g (x2, x2, x2)

`UnetrPrUpBlock` repeats one stride, so a skip at 6g or 8g cannot come from a 12³ token grid;
12 = 2·2·3 allows only three up-steps. Patch 12 therefore keeps the two coarse ViT skips (as
transposed-conv stacks of stride 2, like patch 16), drops the finest ViT skip, and makes the last
up-step a stride-3 transposed convolution onto the full-resolution image features. Patch 8 = 2·2·2
also has three up-steps: the same two ViT skips, and a stride-2 last step.

The ViT taps z_a, z_b, z_c are the outputs of blocks round(depth·k/4), k = 1, 2, 3 (1-based):
3, 6, 9 for depth 12 (UNETR's z3, z6, z9), 2, 3, 5 for the tiny preset's depth 6.

There is no deep supervision: one full-resolution output, `[B, num_classes, D, D, D]`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

from medgmae_plans.configurations import SUPPORTED_PATCHES, VIT_B

from .networks import ViT3D

LAST_UP_STEP = {8: 2, 12: 3}  # patches without the 8g skip: stride of the up-step onto the image features


def skip_layers(depth: int) -> tuple[int, int, int]:
    """1-based ViT blocks whose outputs feed UNETR's skips: round-half-up of depth·k/4, k = 1..3."""
    if depth < 3:
        raise ValueError(f"UNETR needs a ViT with at least 3 blocks, got depth {depth}")
    return tuple(max(1, math.floor(depth * k / 4 + 0.5)) for k in (1, 2, 3))


def used_skip_layers(depth: int, patch_size: int) -> tuple[int, ...]:
    """The `skip_layers` UNETR's decoder reads at this patch: all three at patch 16, the two coarse ones
    (z_b, z_c) at patches 12 and 8, which have no 8g level for z_a (see the module docstring)."""
    za, zb, zc = skip_layers(depth)
    return (za, zb, zc) if int(patch_size) == 16 else (zb, zc)


def _cubic(img_size) -> int:
    sizes = [int(img_size)] * 3 if isinstance(img_size, (int, float)) else [int(s) for s in img_size]
    if len(sizes) != 3 or len(set(sizes)) != 1:
        raise ValueError(f"UNETR here needs a cubic patch (img_size), got {list(sizes)}")
    return sizes[0]


class UNETR(nn.Module):
    """ViT3D encoder + MONAI UNETR decoder blocks.

    forward: [B, in_channels, D, D, D] -> logits [B, num_classes, D, D, D].
    """

    def __init__(self, in_channels: int, num_classes: int, img_size: int = 96, patch_size: int = 16,
                 hidden_size: int = VIT_B["embed_dim"], num_layers: int = VIT_B["depth"],
                 num_heads: int = VIT_B["num_heads"], mlp_ratio: float = VIT_B["mlp_ratio"],
                 feature_size: int = 16, norm_name: str | tuple = "instance", drop_path_rate: float = 0.0):
        super().__init__()
        if patch_size not in SUPPORTED_PATCHES:
            raise ValueError(f"UNETR patch size must be one of {SUPPORTED_PATCHES}, got {patch_size}")
        self.encoder = ViT3D(img_size=img_size, patch_size=patch_size, in_chans=in_channels, embed_dim=hidden_size,
                             depth=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate)
        self.patch_size = patch_size
        self.grid = self.encoder.grid
        self.taps = skip_layers(num_layers)
        fs, h = feature_size, hidden_size
        common = dict(spatial_dims=3, kernel_size=3, norm_name=norm_name, res_block=True)
        self.encoder1 = UnetrBasicBlock(in_channels=in_channels, out_channels=fs, stride=1, **common)
        if patch_size == 16:
            self.encoder2 = UnetrPrUpBlock(in_channels=h, out_channels=fs * 2, num_layer=2, stride=1,
                                           upsample_kernel_size=2, conv_block=True, **common)
        else:
            self.encoder2 = None  # no 4g·2 level below a 12^3 or 8^3 patch (see the module docstring)
        self.encoder3 = UnetrPrUpBlock(in_channels=h, out_channels=fs * 4, num_layer=1, stride=1,
                                       upsample_kernel_size=2, conv_block=True, **common)
        self.encoder4 = UnetrPrUpBlock(in_channels=h, out_channels=fs * 8, num_layer=0, stride=1,
                                       upsample_kernel_size=2, conv_block=True, **common)
        self.decoder5 = UnetrUpBlock(in_channels=h, out_channels=fs * 8, upsample_kernel_size=2, **common)
        self.decoder4 = UnetrUpBlock(in_channels=fs * 8, out_channels=fs * 4, upsample_kernel_size=2, **common)
        if patch_size == 16:
            self.decoder3 = UnetrUpBlock(in_channels=fs * 4, out_channels=fs * 2, upsample_kernel_size=2, **common)
            self.decoder2 = UnetrUpBlock(in_channels=fs * 2, out_channels=fs, upsample_kernel_size=2, **common)
        else:
            self.decoder3 = None
            self.decoder2 = UnetrUpBlock(in_channels=fs * 4, out_channels=fs,
                                         upsample_kernel_size=LAST_UP_STEP[patch_size], **common)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=num_classes)

    def tokens_to_volume(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, C] tokens in raster order -> [B, C, gd, gh, gw]."""
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, (za, zb, zc) = self.encoder.forward_hidden(x, self.taps)
        enc1 = self.encoder1(x)
        enc3 = self.encoder3(self.tokens_to_volume(zb))
        enc4 = self.encoder4(self.tokens_to_volume(zc))
        dec = self.decoder5(self.tokens_to_volume(tokens), enc4)
        dec = self.decoder4(dec, enc3)
        if self.patch_size == 16:
            dec = self.decoder3(dec, self.encoder2(self.tokens_to_volume(za)))
        dec = self.decoder2(dec, enc1)
        return self.out(dec)


def build_unetr(input_channels: int, num_classes: int, img_size: Sequence[int] | int = (96, 96, 96),
                patch_size: int = 16, hidden_size: int = VIT_B["embed_dim"],
                mlp_dim: int = int(VIT_B["embed_dim"] * VIT_B["mlp_ratio"]), num_layers: int = VIT_B["depth"],
                num_heads: int = VIT_B["num_heads"], feature_size: int = 16, norm_name: str = "instance",
                dropout_rate: float = 0.0, drop_path_rate: float = 0.0, deep_supervision: bool = False) -> UNETR:
    """nnU-Net's network entry: the plans' MONAI UNETR keywords -> `UNETR` (no deep supervision).

    `mlp_dim` must be a multiple of `hidden_size` (ViT3D takes an MLP ratio). `dropout_rate` must be 0:
    ViT3D regularises with stochastic depth (`drop_path_rate`) instead of dropout.
    """
    if deep_supervision:
        raise ValueError("UNETR has no deep supervision; train it with a MedGMAE trainer "
                         "(enable_deep_supervision = False)")
    if dropout_rate:
        raise ValueError(f"dropout_rate {dropout_rate}: the ViT3D encoder has no dropout; use drop_path_rate")
    if mlp_dim % hidden_size:
        raise ValueError(f"mlp_dim {mlp_dim} is not a multiple of hidden_size {hidden_size}")
    return UNETR(input_channels, num_classes, img_size=_cubic(img_size), patch_size=int(patch_size),
                 hidden_size=int(hidden_size), num_layers=int(num_layers), num_heads=int(num_heads),
                 mlp_ratio=mlp_dim / hidden_size, feature_size=int(feature_size), norm_name=norm_name,
                 drop_path_rate=float(drop_path_rate))
