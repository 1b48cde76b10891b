"""Pretrained encoders into UNETR: reading, checking and loading a pretraining checkpoint.

A pretraining `checkpoint_final.pt` holds `encoder` (the ViT3D state dict), `model` (`encoder.*`
and `decoder.*`) and `metadata` (preset, decoder type, patch and crop size, spacing, normalisation,
network config). UNETR's encoder is the same ViT3D under the prefix `encoder.`, so the keys load
one-to-one, through `networks.encoder_state.load_encoder_state` (the loader classification and
registration use too, through `pretrain.pretrained`). When the fine-tuning patch gives another
token grid than the pretraining crop,
the position embeddings are re-gridded by `networks.pos_embed.resize_pos_embed`: the fixed sin-cos
table is recomputed on the new grid, a learned table is interpolated trilinearly; the cls row is kept.
Every encoder key must load; the decoder keys are logged as skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from medgmae_plans.constants import INIT_BY_DECODER
from medgmae_plans.runtime import UserError

from ..networks import PRESETS, network_config
from ..pretrain import pretrained
from ..pretrain.pretrained import PretrainedEncoder, check_geometry, check_normalisation


def read_pretrained(path) -> PretrainedEncoder:
    """Read a pretraining checkpoint; a missing, unreadable or foreign file is a one-line `UserError`."""
    path = Path(path).expanduser().resolve()
    pre = pretrained.read_pretrained(path, metadata_keys=("decoder_type", "patch_size", "network_config",
                                                          "normalisation"))
    if pre.metadata["decoder_type"] not in INIT_BY_DECODER:
        raise UserError(f"{path}: unknown decoder type {pre.metadata['decoder_type']!r}")
    return pre


def check_fits(pre: PretrainedEncoder, plans: dict, configuration: str, *, preset: str | None = None,
               patch: int | None = None) -> None:
    """Refuse a checkpoint whose preset, patch, normalisation, configuration or spacing does not fit
    fine-tuning on `configuration` of `plans`."""
    meta, where = pre.metadata, pre.path
    if preset is not None and meta.get("preset") != preset:
        raise UserError(f"{where}: pretrained with preset {meta.get('preset')!r}, but --preset {preset} was asked; "
                        f"the encoder sizes must match (drop --preset to use the checkpoint's)")
    if patch is not None and int(meta["patch_size"]) != int(patch):
        raise UserError(f"{where}: pretrained with patch {meta['patch_size']}^3, but --patch {patch} was asked; "
                        f"the patch embedding cannot be loaded into another patch size")
    check_normalisation(meta, where, plans)
    check_geometry(meta, where, plans["configurations"][configuration]["spacing"], configuration)


def unetr_arch_kwargs(encoder: dict, img_size, feature_size: int, norm_name="instance") -> dict:
    """MONAI-UNETR keywords for `build_unetr` from a ViT3D encoder config (preset or checkpoint)."""
    hidden = int(encoder["embed_dim"])
    return {
        "img_size": [int(s) for s in img_size],
        "patch_size": int(encoder["patch_size"]),
        "hidden_size": hidden,
        "mlp_dim": int(round(hidden * float(encoder.get("mlp_ratio", 4.0)))),
        "num_layers": int(encoder["depth"]),
        "num_heads": int(encoder["num_heads"]),
        "feature_size": int(feature_size),
        "norm_name": norm_name,
        "dropout_rate": 0.0,
        "drop_path_rate": float(encoder.get("drop_path_rate", 0.0)),
    }


def preset_encoder(preset: str, patch: int | None = None) -> dict:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return network_config(preset, patch_size=patch)["encoder"]


def load_encoder(network: torch.nn.Module, pre: PretrainedEncoder, log: Callable[[str], None] = print) -> dict:
    """Copy the checkpoint's encoder into `network.encoder` (UNETR's ViT3D); every encoder key must load.

    Returns `load_encoder_state`'s report (loaded ViT3D keys, skipped pretraining-decoder keys, the
    position-embedding grids when they were re-gridded) plus the checkpoint path. A key or shape
    mismatch is a `UserError`.
    """
    report = pretrained.load_pretrained(network.encoder, pre,
                                        "; the checkpoint's network differs from the plans' architecture")
    report["checkpoint"] = str(pre.path)
    if report["pos_embed_interpolated"]:
        grids = report["pos_embed_interpolated"]
        log(f"position embeddings re-gridded from grid {grids['from']} to {grids['to']}")
    log(f"loaded {report['loaded_keys']} encoder tensors from {pre.path}")
    if pre.other_keys:
        log(f"not loaded ({len(pre.other_keys)} pretraining keys outside the encoder): "
            + ", ".join(pre.other_keys[:8]) + (" ..." if len(pre.other_keys) > 8 else ""))
    return report
