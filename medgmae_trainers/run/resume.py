"""A run folder: start fresh, or resume from its latest checkpoint under the same settings."""
from __future__ import annotations

from pathlib import Path

from medgmae_plans.runtime.atomic import remove_leftovers
from medgmae_plans.runtime import UserError

from .checkpoint import load_checkpoint

# Settings that may differ on resume: where and how the run executes and how often it reports, none
# of which changes what it computes; and `steps`, so that a step-based run (pretraining,
# registration) is extended by resuming it with more (benchmarks.transfer relies on it).
# Everything else, classification's `epochs` included, must match.
RUN_ONLY = frozenset({"out", "resume", "device", "workers", "threads", "render_backend", "pbar",
                      "save_every", "keep_steps", "png_every", "log_every", "val_every", "steps"})


def resume_state(latest: Path, resume: bool, fmt: str, what: str) -> dict | None:
    """The checkpoint to continue from, or None for a fresh start (also with --resume and nothing saved).

    A latest checkpoint without --resume is refused: the fresh run would overwrite it. What a run
    killed mid-write left of its atomic writes (`atomic.remove_leftovers`) is removed: this is where a
    run starts again in its own folder.
    """
    latest = Path(latest)
    remove_leftovers(latest.parent)
    if latest.exists() and not resume:
        raise UserError(f"{latest} exists; pass --resume to continue that run, or choose another --out")
    return load_checkpoint(latest, fmt, what) if resume and latest.exists() else None


def check_settings(path: Path, saved: dict, now: dict) -> None:
    """Refuse to resume under settings that would make the rest of the run another run than the saved one.

    A key the saved record lacks came with a later version of the toolkit (pretraining's
    `configuration`): it is not compared, and what it decides is compared through the keys that were
    there (the crop, patch and spacing).
    """
    diff = [key for key in now if key not in RUN_ONLY and key in saved and saved[key] != now[key]]
    if diff:
        raise UserError(f"{path}: saved settings differ from this command's in {diff}; "
                        "resume with the same settings")
