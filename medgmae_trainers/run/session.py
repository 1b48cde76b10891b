"""A resumable run folder: what every loop on the run core does around its steps, written once.

    run_dir = RunFolder(out, FORMAT, WHAT, resume, log)           # fresh, or the latest checkpoint
    start = run_dir.restore(model, optimizer, scheduler, asdict(s)) if run_dir.state else 0
    metrics = run_dir.metrics(start)                               # metrics.jsonl, cut back to `start`
    check_finite(f"step {step}", lr, run_dir.latest, loss, grad_norm)   # each step: UserError, exit 2
    run_dir.save_latest(model, optimizer, scheduler, settings=asdict(s), step=step)
    raise run_dir.interrupted(signum, f"at step {step}", saved_at=step)   # exit 128 + signum

The checkpoint's content is the loop's: `save_latest` writes the format tag, the training state, the
RNG and the settings, and whatever progress the loop passes (step or epoch, history, config...).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from medgmae_plans.runtime.atomic import save_torch_atomic
from medgmae_plans.runtime import Interrupted, UserError

from .checkpoint import FINAL, LATEST, restore_training, training_state
from .metrics import MetricsLog
from .resume import check_settings, resume_state
from .rng import capture_rng, restore_rng


def check_finite(where: str, lr: float, latest: Path, loss: float, grad_norm: float | None = None,
                 warmup_flag: str | None = None) -> None:
    """Refuse a step whose loss or gradient norm is NaN or infinite, before the optimiser takes it.

    The `UserError` (exit 2) names `where` ("step 12", "step 7 (epoch 2)") and the learning rate; the
    run stops without saving, so its last checkpoint is the last good one. The advice names the
    loop's `warmup_flag` where it has one.
    """
    bad = "loss" if not math.isfinite(loss) else "gradient norm" if not math.isfinite(grad_norm or 0.0) else None
    if bad:
        raise UserError(f"non-finite {bad} at {where} (lr {lr:.2e}); stopped without saving; the last good "
                        f"checkpoint is {latest} (if any). Try a lower --lr"
                        + (f" or a longer {warmup_flag}" if warmup_flag else ""))


class RunFolder:
    """One run's folder `out`: its latest and final checkpoints (`fmt`, described as `what`), resumed or fresh.

    `state` is the latest checkpoint when `resume` finds one, else None (a fresh run; a latest
    checkpoint without `resume` is refused, see `resume_state`). `key` numbers the run's progress
    ("step" or "epoch") in the log, the metrics and the messages. `log` may be set after the folder is
    opened, so that a refused resume writes no log (pretraining does).
    """

    def __init__(self, out, fmt: str, what: str, resume: bool, log: logging.Logger | None = None, key: str = "step"):
        self.out, self.fmt, self.log, self.key = Path(out), fmt, log, key
        self.latest, self.final = self.out / LATEST, self.out / FINAL
        self.state = resume_state(self.latest, resume, fmt, what)

    def restore(self, model, optimizer, scheduler, now: dict, saved: dict | None = None, rank: int = 0,
                world_size: int = 1) -> int:
        """Continue from `state`: refuse other settings (`now` against `saved`, default the saved
        settings), put back the training state and this process's RNG; returns the saved step/epoch.

        Without a saved RNG (registration before 2026-12) or saved by another number of processes,
        the run continues on fresh RNG streams; the latter is not bit-identical, and says so.
        """
        state = self.state
        check_settings(self.latest, state["settings"] if saved is None else saved, now)
        restore_training(state, model, optimizer, scheduler)
        rng = state.get("rng")
        if isinstance(rng, list):  # one state per rank (pretraining)
            if state["world_size"] == world_size:
                restore_rng(rng[rank])
            else:
                self.log.warning(f"resuming with {world_size} processes, saved with {state['world_size']}: "
                                 "fresh RNG streams, so the run continues but is not bit-identical")
        elif rng is not None:
            restore_rng(rng)
        at = int(state[self.key])
        self.log.info(f"resumed from {self.latest} at {self.key} {at}")
        return at

    def metrics(self, start: int) -> MetricsLog:
        """`metrics.jsonl`, without the rows logged after `start` (the checkpoint's step/epoch)."""
        return MetricsLog(self.out / "metrics.jsonl", start, key=self.key)

    def save_latest(self, model, optimizer, scheduler, *, settings: dict, rng=None, **progress) -> None:
        """Write checkpoint_latest.pt atomically: format, training state, RNG (this process's unless
        given: pretraining passes one per rank), settings, and the loop's `progress` entries."""
        save_torch_atomic({"format": self.fmt, **training_state(model, optimizer, scheduler), **progress,
                           "rng": capture_rng() if rng is None else rng, "settings": settings}, self.latest)

    def interrupted(self, signum: int, where: str, saved_at: int | None) -> Interrupted:
        """The `Interrupted` (exit 128 + signum) to raise: where the signal stopped the run ("at step
        5", "in epoch 2") and the step/epoch `--resume` continues from (None: nothing saved)."""
        if saved_at is not None:
            tail = (f"continue from {self.key} {saved_at} with the same command and --resume "
                    f"(saved {self.latest})")
        else:
            tail = f"no {self.key} had finished, none saved"
        return Interrupted(f"interrupted by signal {signum} {where}; {tail}", signum)
