"""The random state of a process (python, numpy, torch CPU and every CUDA device), saved and put back.

A resumed run restores it so that masks, drop-path, augmentation and case order continue exactly
where the uninterrupted run would be.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    # One state per CUDA device: the run's device need not be the current one (`--device cuda:1`).
    # While CUDA is untouched nothing has drawn from it, and asking would start it for nothing.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, torch.Tensor):  # pretraining checkpoints before 2026-12: the current device's alone
        torch.cuda.set_rng_state(cuda)
        return
    for device, device_state in enumerate(cuda[:torch.cuda.device_count()]):  # resumed on fewer GPUs: theirs
        torch.cuda.set_rng_state(device_state, device)
