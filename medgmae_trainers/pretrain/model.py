"""The pretraining objective: encoder + decoder + (for Gaussians) the renderer + masked MSE.

One `nn.Module` so DistributedDataParallel wraps all of it. Its forward:

    imgs [B, 1, D, H, W] --encoder(mask r)--> latent [B, 1+n, C], token mask [B, N]
    token mask --> voxel mask [B, D, H, W] (True = masked voxel)
    gaussian / hierarchical: decoder(latent, ids_keep) -> K Gaussians -> render only masked voxels
    voxel:                   decoder(latent, ids_restore) -> [B, N, p^3] -> unpatchify
    loss = mean over masked voxels of (prediction - target)^2
"""
from __future__ import annotations

import torch
import torch.nn as nn

from medgmae_plans.runtime import UserError
from renderer_cupy import render_gaussians

from ..networks import ViT3D, build_networks, token_mask_to_voxels, unpatchify
from ..networks.presets import RENDER_CUTOFF


def masked_mse(pred: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (pred - target)^2 over voxel_mask. pred, target [B, 1, D, H, W]; voxel_mask bool [B, D, H, W]."""
    m = voxel_mask.unsqueeze(1).to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


def visible_mean_mse(imgs: torch.Tensor, voxel_mask: torch.Tensor) -> float:
    """The masked MSE of the trivial prediction, each crop's mean visible intensity: the number a
    model has to beat before its pictures show anything. imgs [B, 1, D, H, W], voxel_mask [B, D, H, W]."""
    x, m = imgs[:, 0].float(), voxel_mask
    visible_mean = (x * ~m).sum((1, 2, 3)) / (~m).sum((1, 2, 3)).clamp_min(1)
    return masked_mse(visible_mean.view(-1, 1, 1, 1, 1).expand_as(imgs).float(), imgs.float(), m).item()


class PretrainModel(nn.Module):
    """MedGMAE (decoder_type "gaussian"), MedGMAE* ("hierarchical") or voxel MAE ("voxel")."""

    def __init__(self, encoder: ViT3D, decoder: nn.Module, decoder_type: str, mask_ratio: float = 0.75,
                 render_backend: str = "auto", render_cutoff: float = RENDER_CUTOFF):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.decoder_type = decoder_type
        self.mask_ratio = mask_ratio
        self.render_backend = render_backend
        self.render_cutoff = render_cutoff

    def forward(self, imgs: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """imgs [B, 1, D, H, W]; target defaults to imgs. Returns
            loss        scalar, masked MSE
            pred        [B, 1, D, H, W] prediction, 0 outside the masked voxels for the Gaussian decoders
            voxel_mask  bool [B, D, H, W], True where masked
            gaussians   dict of the predicted Gaussians (Gaussian decoders only)
        """
        target = imgs if target is None else target
        enc = self.encoder
        latent, mask, ids_restore, ids_keep = enc(imgs, self.mask_ratio)
        voxel_mask = token_mask_to_voxels(mask, enc.grid, enc.patch_embed.patch_size)
        out: dict = {"voxel_mask": voxel_mask}
        if self.decoder_type == "voxel":
            pred = unpatchify(self.decoder(latent, ids_restore), enc.grid, enc.patch_embed.patch_size).float()
        else:
            gaussians = self.decoder(latent, ids_keep)
            # The renderer computes in float32 outside autocast itself. The cutoff is the preset's
            # (the paper's 2 sigma), not the renderer's own default.
            pred = render_gaussians(gaussians["means"], gaussians["scales"], gaussians["quats"],
                                    gaussians["intensities"], tuple(imgs.shape[2:]), mask=voxel_mask,
                                    cutoff=self.render_cutoff, backend=self.render_backend)
            out["gaussians"] = gaussians
        out["pred"] = pred
        out["loss"] = masked_mse(pred, target.float(), voxel_mask)
        return out

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """For pictures: like forward, but the prediction covers every voxel (the full render)."""
        out = self.forward(imgs)
        if "gaussians" in out:
            g = out["gaussians"]
            out["pred"] = render_gaussians(g["means"], g["scales"], g["quats"], g["intensities"],
                                           tuple(imgs.shape[2:]), cutoff=self.render_cutoff,
                                           backend=self.render_backend)
        return out


def load_pretrain_model(path, device="cpu") -> tuple[PretrainModel, dict]:
    """(the whole pretraining model of a checkpoint, encoder and decoder, in eval mode; its metadata).

    Both checkpoint kinds hold the model; a missing, unreadable or foreign file, or weights that do not
    fit the network config the checkpoint declares, is a one-line `UserError` naming the file.
    """
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    meta = ckpt.get("metadata", {})
    if "network_config" not in meta or not any(k.startswith("decoder.") for k in ckpt.get("model", {})):
        raise UserError(f"{path}: holds no decoder weights or network config (is it a checkpoint_final.pt?)")
    cfg = meta["network_config"]
    encoder, decoder = build_networks(cfg, meta["decoder_type"])
    model = PretrainModel(encoder, decoder, meta["decoder_type"], meta.get("mask_ratio", 0.75),
                          render_cutoff=cfg["gaussians"]["render_cutoff"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the network config it declares "
                        f"({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), meta
