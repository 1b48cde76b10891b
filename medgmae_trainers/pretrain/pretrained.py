"""A pretraining checkpoint's encoder, read and loaded the same way by every downstream task.

`read_pretrained` reads a `checkpoint_final.pt` (or `checkpoint_latest.pt`) through the one reader
of those files, `pretrain.checkpoint.load_checkpoint`; `load_pretrained` copies its encoder into a
ViT3D through `encoder_state.load_encoder_state` (every key must load; the position embeddings are
re-gridded from the pretraining crop's token grid), and a mismatch is a one-line `UserError` naming
the file. Classification and registration build the ViT3D the checkpoint describes
(`pretrained_vit`); fine-tuning loads into UNETR's encoder (`finetune.encoder_loading`).
`check_normalisation` and `check_geometry` refuse a checkpoint whose intensity window, configuration
or spacing does not fit the data it is used on.

Not imported by `networks/__init__`, which needs torch alone: this module reads checkpoint files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from medgmae_plans.constants import INIT_BY_DECODER, NORMALISATION
from medgmae_plans.runtime import UserError

from .checkpoint import encoder_state, load_checkpoint
from ..networks.encoder_state import EncoderStateMismatch, load_encoder_state
from ..networks.pos_embed import set_token_grid
from ..networks.vit import ViT3D


@dataclass
class PretrainedEncoder:
    path: Path
    state: dict           # ViT3D state dict (keys without prefix)
    metadata: dict
    other_keys: list = field(default_factory=list)  # keys of the checkpoint's model that are not the encoder's

    @property
    def init(self) -> str:
        """The init name of runs started from this checkpoint (`medgmaestar` for a hierarchical decoder)."""
        return INIT_BY_DECODER[self.metadata["decoder_type"]]

    @property
    def encoder_config(self) -> dict:
        return dict(self.metadata["network_config"]["encoder"])

    @property
    def token_grid(self) -> list[int] | None:
        """The pretraining crop's token grid (crop size / patch per axis), or None when not recorded."""
        crop = self.metadata.get("crop_size")
        return [int(s) // int(self.metadata["patch_size"]) for s in crop] if crop else None


def read_pretrained(path, metadata_keys: Sequence[str] = ()) -> PretrainedEncoder:
    """The encoder of a pretraining checkpoint; a missing, unreadable or foreign file, metadata lacking
    one of `metadata_keys`, or no encoder weights is a one-line `UserError`."""
    path = Path(path)
    ckpt = load_checkpoint(path, metadata_keys=metadata_keys)
    state, other = encoder_state(ckpt, path)
    return PretrainedEncoder(path, state, ckpt["metadata"], other)


def check_normalisation(meta: dict, where, plans: dict | None = None) -> None:
    """The record medgmae_pretrain wrote into the checkpoint, against the one it writes from (and the plans')."""
    norm, expected = meta["normalisation"], NORMALISATION
    window = [float(v) for v in norm.get("hu_window", [])]
    if norm.get("scheme") != expected["scheme"] or window != expected["hu_window"]:
        raise UserError(f"{where}: pretrained with normalisation {norm.get('scheme')} {window}, but the plans use "
                        f"{expected['scheme']} with the HU window {expected['hu_window']}")
    if plans is None:
        return
    props = plans.get("foreground_intensity_properties_per_channel", {}).get("0", {})
    plan_window = [props.get("percentile_00_5"), props.get("percentile_99_5")]
    if plan_window != expected["hu_window"]:
        raise UserError(f"plans {plans.get('plans_name')}: intensity window {plan_window} differs from the "
                        f"checkpoint's {window}; re-plan with medgmae_plan_and_preprocess")


def check_geometry(meta: dict, where, spacing, configuration: str | None = None) -> None:
    """Refuse a checkpoint pretrained on another configuration or at another voxel spacing than the data's.

    Checkpoints from before configurations were recorded carry only their spacing (the 1.5 mm of
    `3d_fullres`); the spacing alone then decides.
    """
    saved = meta.get("configuration")
    if configuration is not None and saved is not None and saved != configuration:
        raise UserError(f"{where}: pretrained on configuration {saved} ({meta.get('spacing')} mm), but this run "
                        f"uses {configuration} ({list(spacing)} mm); pretrain with -c {configuration}")
    saved_spacing = meta.get("spacing")
    if saved_spacing is not None and not _same_spacing(saved_spacing, spacing):
        raise UserError(f"{where}: pretrained at spacing {list(saved_spacing)} mm, but the data is at "
                        f"{[float(s) for s in spacing]} mm" + (f" ({configuration})" if configuration else ""))


def _same_spacing(a, b, tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))


def load_pretrained(encoder: ViT3D, pre: PretrainedEncoder, mismatch_hint: str = "") -> dict:
    """Copy `pre`'s weights into `encoder` in place; `load_encoder_state`'s report.

    A key or shape mismatch is a `UserError` naming the checkpoint, followed by `mismatch_hint`.
    """
    try:
        return load_encoder_state(encoder, pre.state, source_grid=pre.token_grid, skipped=pre.other_keys)
    except EncoderStateMismatch as err:
        raise UserError(f"{pre.path}: {err}{mismatch_hint}") from None


def pretrained_vit(path) -> tuple[ViT3D, dict]:
    """The ViT3D a pretraining checkpoint describes (`encoder_config`), every encoder key loaded.

    Returns (encoder, the checkpoint's metadata plus `load_report`, `load_encoder_state`'s report).
    The encoder keeps the pretraining crop's token grid; `fit_token_grid` adapts it to the caller's
    volumes.
    """
    pre = read_pretrained(path, metadata_keys=("encoder_config", "normalisation"))
    check_normalisation(pre.metadata, pre.path)  # the voxels it learned on must be windowed as ours
    encoder = ViT3D(**pre.metadata["encoder_config"])
    return encoder, {**pre.metadata, "load_report": load_pretrained(encoder, pre)}


def fit_token_grid(encoder: ViT3D, size_zyx: Sequence[int]) -> list[int]:
    """Adapt `encoder` (pretrained or scratch) in place to whole volumes of `size_zyx` (z, y, x), as
    classification and registration feed them; returns their token grid. A size that is not a
    multiple of the encoder's patch is a `UserError`."""
    patch = encoder.patch_embed.patch_size
    if any(int(n) % patch for n in size_zyx):
        raise UserError(f"volume size {tuple(size_zyx)} (z, y, x) is not a multiple of the encoder's patch {patch}")
    grid = tuple(int(n) // patch for n in size_zyx)
    set_token_grid(encoder, grid)
    return list(grid)
