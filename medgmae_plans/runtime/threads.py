"""How the commands share the CPU cores with each other and with other jobs.

torch runs its operators on an OpenMP pool whose idle threads, by GNU OpenMP's default, spin for a
while at every barrier before they sleep. On a machine with few cores that other work also needs,
a spinning thread burns the time slice its partner needs to reach the barrier. Measured on two cores
(`python -m benchmarks.contention`, `benchmarks.finetune_step`, docs/results.md): a tiny pretraining
step went from 0.06 s to 0.36 s beside a one-thread busy loop and to 1.0 s beside a two-thread torch
job, and a fine-tuning iteration took 2.8x its network step because the spinning pool starved
nnU-Net's augmentation workers. Waiters that sleep at once (`OMP_WAIT_POLICY=PASSIVE`) give the core
away instead: the same iteration costs 1.1x its step.

The policy must be in the environment before torch loads its OpenMP library, so every console
command calls `use_sleeping_waiters()` as its first act, before any import that loads torch (and so
do `benchmarks` and `run.py`'s children, through the environment); importing a module never sets it.
A value the user set is kept. Child processes (data workers, nnU-Net's augmentation) inherit it.
"""
from __future__ import annotations

import os

SLEEPING_WAITERS = {"OMP_WAIT_POLICY": "PASSIVE"}


def use_sleeping_waiters() -> None:
    """Make OpenMP's idle threads sleep instead of spin (unless the user chose otherwise)."""
    for var, value in SLEEPING_WAITERS.items():
        os.environ.setdefault(var, value)
