"""Reading checkpoints back, and the part of a resumable checkpoint that every loop saves alike.

Writing is `medgmae_plans.runtime.atomic.save_torch_atomic` (a temporary name, then a rename), so a run
killed while saving still has its previous checkpoint. Every checkpoint carries a `format` tag
("medgmae-<task>/<version>"), and `load_checkpoint` is the one reader: it refuses anything else, and
reads tensors and plain data only (`medgmae_plans.runtime.safe_load`), so a shared checkpoint runs no code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from medgmae_plans.runtime import UserError
from medgmae_plans.runtime.safe_load import load_torch

LATEST, FINAL = "checkpoint_latest.pt", "checkpoint_final.pt"


def load_checkpoint(path, fmt: str, what: str, keys: Sequence[str] = ()) -> dict:
    """The checkpoint at `path`, if it is one of format `fmt` holding `keys`.

    Anything else (missing, unreadable, foreign, lacking a key) is a one-line `UserError` that
    names the file; `what` says what was expected ("pretraining checkpoint").
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    # tensors and plain data only (torch's weights_only, numpy's arrays allowed): a checkpoint shared by
    # another lab can run no code here; a foreign or cut file is one line naming it
    ckpt = load_torch(path, what)
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise UserError(f"{path}: not a medgmae {what} (expected format {fmt!r})")
    missing = [key for key in keys if key not in ckpt]
    if missing:
        raise UserError(f"{path}: not a medgmae {what} (it holds no {', '.join(missing)})")
    return ckpt


def training_state(model: torch.nn.Module, optimizer, scheduler) -> dict:
    """What a resumed run needs to take the next step as the uninterrupted one would."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def restore_training(state: dict, model: torch.nn.Module, optimizer, scheduler) -> None:
    """Put back what `training_state` saved (the RNG is restored separately: pretraining keeps one per rank)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])  # moments and each group's current lr
    scheduler.load_state_dict(state["scheduler"])  # the step the schedule continues from
