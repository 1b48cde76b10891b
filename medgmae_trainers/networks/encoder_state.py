"""Loading a pretrained ViT3D state dict into a ViT3D: the one loader for fine-tuning, classification, registration.

Every key of the target encoder must come from the state dict with the target's shape, and the state
dict may hold nothing else: a partly loaded encoder would train silently from a half-random start.
The one allowed difference is the token grid: `pos_embed` [1, 1 + N, C] is re-gridded with
`resize_pos_embed` (the sin-cos table recomputed, a learned table interpolated trilinearly) when the
checkpoint's grid is not the encoder's. Torch alone: callers turn `EncoderStateMismatch` into their
own error naming the file.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .pos_embed import resize_pos_embed
from .vit import ViT3D


class EncoderStateMismatch(ValueError):
    """The state dict does not fit the encoder: missing, unexpected or wrongly shaped keys, or no token grid."""


def load_encoder_state(encoder: ViT3D, state: Mapping[str, torch.Tensor], *,
                       source_grid: Sequence[int] | None = None, skipped: Sequence[str] = ()) -> dict:
    """Copy `state` (ViT3D keys, no prefix) into `encoder` in place; every encoder key must load.

    `source_grid` is the token grid `state["pos_embed"]` was made for (e.g. (6, 6, 6) for 96^3 crops at
    patch 16); when None it is taken to be the encoder's grid if the token counts agree, else the cube
    with that many tokens. `skipped` names checkpoint keys the caller left out on purpose (the
    pretraining decoder); they are only reported.

    Returns {"loaded": sorted keys, "loaded_keys": their count, "skipped": list(skipped),
    "pos_embed_interpolated": None, or {"from": grid, "to": grid} when pos_embed was re-gridded}.
    Raises `EncoderStateMismatch` naming the missing, unexpected and wrongly shaped keys.
    """
    state = dict(state)
    regrid = None
    if "pos_embed" in state:
        old = _source_grid(state["pos_embed"], encoder, source_grid)
        if old != tuple(encoder.grid):
            state["pos_embed"] = resize_pos_embed(state["pos_embed"], old, encoder.grid)
            regrid = {"from": list(old), "to": list(encoder.grid)}
    _check_keys_and_shapes(state, encoder.state_dict())
    encoder.load_state_dict(state, strict=True)
    loaded = sorted(state)
    return {"loaded": loaded, "loaded_keys": len(loaded), "skipped": list(skipped), "pos_embed_interpolated": regrid}


def _source_grid(pos_embed: torch.Tensor, encoder: ViT3D, hint: Sequence[int] | None) -> tuple[int, int, int]:
    """The token grid of `pos_embed` [1, 1 + N, C]: `hint` when it has N cells, else the encoder's, else a cube."""
    n = int(pos_embed.shape[1]) - 1
    if hint is not None and math.prod(int(g) for g in hint) == n:
        return tuple(int(g) for g in hint)
    if math.prod(encoder.grid) == n:
        return tuple(int(g) for g in encoder.grid)
    side = round(n ** (1 / 3))
    if side ** 3 != n:  # pretraining crops are cubic; anything else needs the grid from the caller
        raise EncoderStateMismatch(f"pos_embed has {n} tokens, which is not a cubic token grid; "
                                   f"cannot re-grid it to the encoder's {list(encoder.grid)}")
    return (side,) * 3


def _check_keys_and_shapes(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Raise `EncoderStateMismatch` unless `state` has exactly the keys of `expected`, with their shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}"
             for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{name} {keys[:4]}{' ...' if len(keys) > 4 else ''}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape (checkpoint vs encoder)", wrong))
                 if keys]
        raise EncoderStateMismatch(f"encoder weights do not match the ViT3D encoder: {'; '.join(parts)}")
