"""Registration networks: `ViTMorph` (TransMorph-style, around the toolkit's ViT3D) and MONAI's VoxelMorph.

Both take (moving, fixed) `[B, 1, D, H, W]` and return (warped moving, DDF `[B, 3, D, H, W]` in
voxels), so one training loop serves both. Warping is MONAI's `Warp`; with `diffeomorphic` the
network's output is a stationary velocity field integrated by MONAI's `DVF2DDF` (scaling and
squaring, 7 steps), as in TransMorph-diff and VoxelMorph-diff.

Encoder choice: a *shared* encoder applied to each image separately (moving and fixed go through
ViT3D as two batch items), not one encoder on a two-channel input with an inflated patch embedding.
The pretrained encoder has only ever seen single CT volumes; run per image it sees exactly that
input, every pretrained key loads unchanged (no inflation heuristic that would make the first
layer see a blend of two images), and its token features are comparable between the two images,
which is what correspondence needs. The pairing happens in the decoder: the two token maps are
concatenated along channels at every level, and the finest skips are convolutions on the
two-channel image pair (as TransMorph's full- and half-resolution convolutional skips). The cost is
a second encoder pass, small next to the full-resolution decoder.

Levels for patch p = 2^k (s = downsampling factor, D = volume edge):

    s = 1, 2     UnetrBasicBlock on cat(moving, fixed)                (fs, 2 fs channels)
    s = 4..p/2   ViT block outputs (both images, 2C channels) brought up from the token grid by
                 MONAI's UnetrPrUpBlock (x2 transposed convolutions)   (fs * min(s, 8))
    s = p        final tokens of both images, 2C channels
    decoder      UnetrUpBlock x2 per level with the skip of that level, then a 3x3x3 convolution to
                 3 channels initialised at ~0 (N(0, 1e-5), TransMorph's registration head), so
                 training starts from the identity map.

ViT taps: for n intermediate levels, blocks round(depth * j / (n + 1)), j = 1..n, the shallower
feeding the finer level (UNETR's z3, z6, z9 ordering); for the tiny preset (depth 6, patch 16)
blocks 2 and 4.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from monai.networks.blocks import DVF2DDF, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

from medgmae_plans.runtime import UserError

from ..networks import ViT3D, network_config
from ..pretrain.pretrained import fit_token_grid, pretrained_vit
from .warping import warp_image

NETWORKS = ("vit", "voxelmorph")


def vit_taps(depth: int, n: int) -> list[int]:
    """1-based ViT blocks feeding the n intermediate levels, finest level first."""
    return [max(1, min(depth, math.floor(depth * j / (n + 1) + 0.5))) for j in range(1, n + 1)]


def check_patch(p: int, name: str = "the encoder patch") -> None:
    """Refuse a patch the decoder cannot climb back from: its levels double 1, 2, 4, ..., p."""
    if p < 4 or p & (p - 1):
        raise UserError(f"{name} {p}: registration needs an encoder patch size that is a power of two >= 4")


class ViTMorph(nn.Module):
    """TransMorph-style registration network: shared ViT3D encoder + convolutional decoder (see module doc)."""

    def __init__(self, encoder: ViT3D, feature_size: int = 16, diffeomorphic: bool = False, integration_steps: int = 7):
        super().__init__()
        p = encoder.patch_embed.patch_size
        check_patch(p)
        self.encoder, self.patch = encoder, p
        self.scales = [2 ** i for i in range(int(math.log2(p)) + 1)]  # 1, 2, 4, ..., p
        mids = [s for s in self.scales if 2 < s < p]
        self.taps = vit_taps(len(encoder.blocks), len(mids))
        c2, fs = 2 * encoder.embed_dim, feature_size
        ch = {s: fs * min(s, 8) for s in self.scales[:-1]}
        common = dict(spatial_dims=3, kernel_size=3, norm_name="instance", res_block=True)
        self.skip1 = UnetrBasicBlock(in_channels=2, out_channels=ch[1], stride=1, **common)
        self.skip2 = UnetrBasicBlock(in_channels=ch[1], out_channels=ch[2], stride=2, **common)
        self.skip_vit = nn.ModuleList([
            UnetrPrUpBlock(in_channels=c2, out_channels=ch[s], num_layer=int(math.log2(p // s)) - 1, stride=1,
                           upsample_kernel_size=2, conv_block=True, **common) for s in mids])
        ups, prev = [], c2
        for s in reversed(self.scales[:-1]):  # p/2, ..., 2, 1
            ups.append(UnetrUpBlock(in_channels=prev, out_channels=ch[s], upsample_kernel_size=2, **common))
            prev = ch[s]
        self.ups = nn.ModuleList(ups)
        self.flow = nn.Conv3d(ch[1], 3, kernel_size=3, padding=1)
        nn.init.normal_(self.flow.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow.bias)
        self.integrate = DVF2DDF(num_steps=integration_steps) if diffeomorphic else None

    def _tokens_to_volume(self, tokens: torch.Tensor, b: int) -> torch.Tensor:
        """[2B, N, C] (moving items then fixed items) -> [B, 2C, *grid]."""
        n, c = tokens.shape[1:]
        vol = tokens.transpose(1, 2).reshape(2 * b, c, *self.encoder.grid)
        return torch.cat([vol[:b], vol[b:]], dim=1)

    def forward_ddf(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """[B, 1, D, H, W] x 2 -> DDF [B, 3, D, H, W] (voxels)."""
        b = moving.shape[0]
        tokens, hidden = self.encoder.forward_hidden(torch.cat([moving, fixed], dim=0), self.taps)
        pair = torch.cat([moving, fixed], dim=1)
        s1 = self.skip1(pair)
        skips = [s1, self.skip2(s1)]  # scales 1, 2
        skips += [blk(self._tokens_to_volume(h, b)) for blk, h in zip(self.skip_vit, hidden)]  # 4 .. p/2
        x = self._tokens_to_volume(tokens, b)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        flow = self.flow(x)
        return self.integrate(flow) if self.integrate is not None else flow

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ddf = self.forward_ddf(moving, fixed)
        return warp_image(moving, ddf), ddf


def build_voxelmorph(diffeomorphic: bool = False) -> nn.Module:
    """MONAI's VoxelMorph with its VoxelMorph-2 U-Net (TransMorph's baseline); plain DDF unless diffeomorphic."""
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet

    backbone = VoxelMorphUNet(spatial_dims=3, in_channels=2, unet_out_channels=32,
                              channels=(16, 32, 32, 32, 32, 32), final_conv_channels=(16, 16))
    return VoxelMorph(backbone=backbone, integration_steps=7 if diffeomorphic else 0)


def build_model(config: dict, pretrained: Path | None = None) -> tuple[nn.Module, dict]:
    """A registration network from `config` (network, shape_zyx, preset, patch, feature_size, diffeomorphic,
    and for a trained model encoder_config) and, for ViTMorph, the pretraining checkpoint to start from.

    Returns (model, info); info records what was loaded (every encoder key, asserted) and the token grid.
    """
    if config["network"] == "voxelmorph":
        if pretrained is not None:
            raise UserError("the VoxelMorph baseline trains from scratch; drop --pretrained")
        div = 16  # the U-Net halves four times
        if any(n % div for n in config["shape_zyx"]):
            raise UserError(f"VoxelMorph needs volume sizes divisible by {div}, got {tuple(config['shape_zyx'])}")
        return build_voxelmorph(config.get("diffeomorphic", False)), {"init": "scratch", "network": "voxelmorph"}
    if pretrained is not None:
        encoder, meta = pretrained_vit(pretrained)
        info = {"init": "pretrained", "checkpoint": str(pretrained), "load_report": meta.pop("load_report"),
                "pretrain_metadata": meta}
    else:
        enc_cfg = config.get("encoder_config") or network_config(config.get("preset", "tiny"),
                                                                 patch_size=config.get("patch"))["encoder"]
        encoder = ViT3D(**enc_cfg)
        info = {"init": "scratch", "preset": config.get("preset")}
    grid = fit_token_grid(encoder, config["shape_zyx"])
    info.update(network="vit", encoder_config=encoder.config, token_grid=grid)
    model = ViTMorph(encoder, feature_size=config.get("feature_size", 16), diffeomorphic=config.get("diffeomorphic", False))
    return model, info
