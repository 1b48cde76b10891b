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

import numpy as np
import torch

from medgmae_plans.atomic import save_torch_atomic

FORMAT = "medgmae-pretrain/1"
LATEST = "checkpoint_latest.pt"
FINAL = "checkpoint_final.pt"


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


def load_checkpoint(path: Path) -> dict:
    # weights_only=False: the checkpoint holds numpy/python RNG states, and it is our own file.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a medgmae pretraining checkpoint")
    return ckpt
