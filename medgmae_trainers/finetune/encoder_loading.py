"""Pretrained encoders into UNETR: reading, checking and loading a pretraining checkpoint.

A pretraining `checkpoint_final.pt` holds `encoder` (the ViT3D state dict), `model` (`encoder.*`
and `decoder.*`) and `metadata` (preset, decoder type, patch and crop size, spacing, normalisation,
network config). UNETR's encoder is the same ViT3D under the prefix `encoder.`, so the keys load
one-to-one. The position embeddings are interpolated (trilinear, like MAE's bicubic 2D
`interpolate_pos_embed`) when the fine-tuning patch gives another token grid than the pretraining
crop; the cls row is kept. Every encoder key must load; the decoder keys are logged as skipped.
"""
from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from medgmae_plans.runtime import UserError

from ..networks import PRESETS, network_config

# decoder type of the pretraining -> the init name in trainer names, and how tables show it
INIT_BY_DECODER = {"voxel": "voxelmae", "gaussian": "medgmae", "hierarchical": "medgmaestar"}
INIT_DISPLAY = {"scratch": "Scratch", "voxelmae": "voxel-MAE", "medgmae": "MedGMAE", "medgmaestar": "MedGMAE*"}
ENCODER_PREFIX = "encoder."


@dataclass
class PretrainedEncoder:
    path: Path
    state: dict           # ViT3D state dict (keys without prefix)
    metadata: dict
    other_keys: list = field(default_factory=list)  # keys of the checkpoint's model that are not the encoder's

    @property
    def init(self) -> str:
        return INIT_BY_DECODER[self.metadata["decoder_type"]]

    @property
    def encoder_config(self) -> dict:
        return dict(self.metadata["network_config"]["encoder"])


def read_pretrained(path) -> PretrainedEncoder:
    """Read a pretraining checkpoint; a missing, unreadable or foreign file is a one-line `UserError`."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{path}: no such pretraining checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    from ..pretrain.checkpoint import FORMAT

    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a medgmae pretraining checkpoint (expected format {FORMAT!r})")
    meta = ckpt.get("metadata") or {}
    for key in ("decoder_type", "patch_size", "network_config", "normalisation"):
        if key not in meta:
            raise UserError(f"{path}: the checkpoint's metadata lacks {key!r}; was it written by medgmae_pretrain?")
    if meta["decoder_type"] not in INIT_BY_DECODER:
        raise UserError(f"{path}: unknown decoder type {meta['decoder_type']!r}")
    model = ckpt.get("model") or {}
    state = ckpt.get("encoder")
    if state is None:  # a latest checkpoint: take the encoder out of the whole model
        state = {k[len(ENCODER_PREFIX):]: v for k, v in model.items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise UserError(f"{path}: the checkpoint holds no encoder weights")
    other = sorted(k for k in model if not k.startswith(ENCODER_PREFIX))
    return PretrainedEncoder(path, dict(state), meta, other)


def check_fits(pre: PretrainedEncoder, plans: dict, *, preset: str | None = None, patch: int | None = None) -> None:
    """Refuse a checkpoint whose preset, patch, normalisation or spacing does not fit this fine-tuning."""
    from medgmae_plans.planner import HU_WINDOW, TARGET_SPACING  # imports nnunetv2: not at module import

    meta, where = pre.metadata, pre.path
    if preset is not None and meta.get("preset") != preset:
        raise UserError(f"{where}: pretrained with preset {meta.get('preset')!r}, but --preset {preset} was asked; "
                        f"the encoder sizes must match (drop --preset to use the checkpoint's)")
    if patch is not None and int(meta["patch_size"]) != int(patch):
        raise UserError(f"{where}: pretrained with patch {meta['patch_size']}^3, but --patch {patch} was asked; "
                        f"the patch embedding cannot be loaded into another patch size")
    norm = meta["normalisation"]
    window = [float(v) for v in norm.get("hu_window", [])]
    if norm.get("scheme") != "CTNormalization" or window != [float(v) for v in HU_WINDOW]:
        raise UserError(f"{where}: pretrained with normalisation {norm.get('scheme')} {window}, but the plans use "
                        f"CTNormalization with the HU window {list(HU_WINDOW)}")
    props = plans.get("foreground_intensity_properties_per_channel", {}).get("0", {})
    plan_window = [props.get("percentile_00_5"), props.get("percentile_99_5")]
    if plan_window != [float(v) for v in HU_WINDOW]:
        raise UserError(f"plans {plans.get('plans_name')}: intensity window {plan_window} differs from the "
                        f"checkpoint's {window}; re-plan with medgmae_plan_and_preprocess")
    spacing = meta.get("spacing")
    if spacing is not None and [float(s) for s in spacing] != [float(s) for s in TARGET_SPACING]:
        raise UserError(f"{where}: pretrained at spacing {spacing} mm, the plans use {list(TARGET_SPACING)} mm")


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


def interpolate_pos_embed(pos_embed: torch.Tensor, old_grid, new_grid) -> torch.Tensor:
    """[1, 1 + prod(old_grid), C] -> [1, 1 + prod(new_grid), C]; the cls row is kept, the rest trilinear."""
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if pos_embed.shape[1] != 1 + math.prod(old_grid):
        raise ValueError(f"pos_embed has {pos_embed.shape[1]} rows, grid {old_grid} needs {1 + math.prod(old_grid)}")
    if old_grid == new_grid:
        return pos_embed
    cls, tokens = pos_embed[:, :1], pos_embed[:, 1:]
    c = tokens.shape[-1]
    vol = tokens.reshape(1, *old_grid, c).permute(0, 4, 1, 2, 3).float()  # raster order z, y, x
    vol = F.interpolate(vol, size=new_grid, mode="trilinear", align_corners=False)
    tokens = vol.permute(0, 2, 3, 4, 1).reshape(1, math.prod(new_grid), c).to(pos_embed.dtype)
    return torch.cat([cls, tokens], dim=1)


def load_encoder(network: torch.nn.Module, pre: PretrainedEncoder, log: Callable[[str], None] = print) -> dict:
    """Copy the checkpoint's encoder into `network.encoder`; every encoder key must load.

    Returns a report: loaded keys, skipped checkpoint keys (the pretraining decoder), and the
    position-embedding grids when they were interpolated. Shape or key mismatches raise `UserError`.
    """
    encoder = network.encoder
    target = encoder.state_dict()
    state = dict(pre.state)
    report = {"checkpoint": str(pre.path), "pos_embed_interpolated": None}
    if "pos_embed" in state and state["pos_embed"].shape != target["pos_embed"].shape:
        old_grid = [s // pre.metadata["patch_size"] for s in pre.metadata.get("crop_size", [])] or None
        if old_grid is None or 1 + math.prod(old_grid) != state["pos_embed"].shape[1]:
            n = state["pos_embed"].shape[1] - 1
            side = round(n ** (1 / 3))
            old_grid = [side] * 3
        state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], old_grid, encoder.grid)
        report["pos_embed_interpolated"] = {"from": list(old_grid), "to": list(encoder.grid)}
        log(f"position embeddings interpolated from grid {list(old_grid)} to {list(encoder.grid)}")
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        raise UserError(f"{pre.path}: encoder keys do not match UNETR's encoder (missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}); the checkpoint's network differs from the plans' architecture")
    for key, value in state.items():
        if value.shape != target[key].shape:
            raise UserError(f"{pre.path}: encoder weight {key} has shape {list(value.shape)}, UNETR's encoder "
                            f"expects {list(target[key].shape)}")
    result = encoder.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    report["loaded"] = sorted(ENCODER_PREFIX + k for k in state)
    report["skipped"] = list(pre.other_keys)
    log(f"loaded {len(state)} encoder tensors from {pre.path}")
    if pre.other_keys:
        log(f"not loaded ({len(pre.other_keys)} pretraining keys outside the encoder): "
            + ", ".join(pre.other_keys[:8]) + (" ..." if len(pre.other_keys) > 8 else ""))
    return report
