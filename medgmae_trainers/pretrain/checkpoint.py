"""Checkpoints: what they hold, atomic saving, and exact restoring of RNG state.

checkpoint_latest.pt (for --resume)          checkpoint_final.pt (for fine-tuning)
    format, metadata, model, step                format, metadata, model, step
    optimizer, scheduler, rng (one per rank),    encoder: the ViT3D state dict alone (keys as ViT3D's)
    world_size, settings
`model` is the whole PretrainModel (keys `encoder.*`, `decoder.*`). `metadata` is what fine-tuning
reads: preset, decoder type, patch size, crop size, spacing, normalisation, step, network config.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgmae_plans.atomic import save_torch_atomic
from medgmae_plans.runtime import UserError

FORMAT = "medgmae-pretrain/1"
LATEST = "checkpoint_latest.pt"
FINAL = "checkpoint_final.pt"
ENCODER_PREFIX = "encoder."  # PretrainModel's encoder keys: "encoder." + ViT3D's own


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_latest(path: Path, *, model, optimizer, scheduler, step: int, metadata: dict, rng_states: list,
                settings: dict) -> None:
    save_torch_atomic({
        "format": FORMAT, "metadata": {**metadata, "step": step}, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
        "rng": rng_states, "world_size": len(rng_states), "settings": settings,
    }, path)


def save_final(path: Path, *, model, step: int, metadata: dict) -> None:
    save_torch_atomic({
        "format": FORMAT, "metadata": {**metadata, "step": step}, "model": model.state_dict(),
        "encoder": model.encoder.state_dict(), "step": step,
    }, path)


def load_checkpoint(path, *, metadata_keys: Sequence[str] = ()) -> dict:
    """Read a pretraining checkpoint (latest or final): the one reader of these files.

    A missing, unreadable or foreign file, or metadata lacking one of `metadata_keys`, is a one-line
    `UserError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such pretraining checkpoint")
    try:
        # weights_only=False: the checkpoint holds numpy/python RNG states, and it is our own file.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling a truncated or foreign file raises many kinds (zip, pickle, EOF, import)
        raise UserError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a medgmae pretraining checkpoint (expected format {FORMAT!r})")
    meta = ckpt.get("metadata") or {}
    for key in metadata_keys:
        if key not in meta:
            raise UserError(f"{path}: the checkpoint's metadata lacks {key!r}; was it written by medgmae_pretrain?")
    return ckpt


def encoder_state(ckpt: dict, path) -> tuple[dict, list[str]]:
    """(the ViT3D state dict, the model's other keys) of a checkpoint read by `load_checkpoint`.

    A final checkpoint stores the encoder alone under `encoder`; a latest one only the whole model,
    whose `encoder.*` keys are the same tensors. The other keys (`decoder.*`) are returned so that
    loaders can report what they skipped.
    """
    model = ckpt.get("model") or {}
    state = ckpt.get("encoder")
    if state is None:
        state = {k[len(ENCODER_PREFIX):]: v for k, v in model.items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise UserError(f"{path}: the checkpoint holds no encoder weights")
    return dict(state), sorted(k for k in model if not k.startswith(ENCODER_PREFIX))
