"""Pretraining checkpoints: what they hold, how they are written, and their one reader.

checkpoint_latest.pt (for --resume)          checkpoint_final.pt (for fine-tuning)
    format, metadata, model, step                format, metadata, model, step
    optimizer, scheduler, rng (one per rank),    encoder: the ViT3D state dict alone (keys as ViT3D's)
    world_size, settings
`model` is the whole PretrainModel (keys `encoder.*`, `decoder.*`). `metadata` is what fine-tuning
reads: preset, decoder type, patch size, crop size, spacing, normalisation, step, network config.
The latest one is written by the run core (`run.RunFolder.save_latest`, which the loop gives the
metadata, step, per-rank RNG and world size), as are reading, the training state and the RNG states.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medgmae_plans.runtime.atomic import save_torch_atomic
from medgmae_plans.runtime import UserError

from .. import run
from ..run import FINAL, LATEST  # noqa: F401  (the file names, as this module has always exported them)

FORMAT = "medgmae-pretrain/1"
WHAT = "pretraining checkpoint"
ENCODER_PREFIX = "encoder."  # PretrainModel's encoder keys: "encoder." + ViT3D's own


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
    ckpt = run.load_checkpoint(path, FORMAT, WHAT)
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
