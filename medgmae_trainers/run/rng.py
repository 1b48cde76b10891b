"""The random state of a process (python, numpy, torch CPU and every CUDA device), saved and put back.

A resumed run restores it so that masks, drop-path, augmentation and case order continue exactly
where the uninterrupted run would be.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    """Plain types only (tensors, lists, numbers), so that checkpoints load with `weights_only=True`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    # One state per CUDA device: the run's device need not be the current one (`--device cuda:1`).
    # While CUDA is untouched nothing has drawn from it, and asking would start it for nothing.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.int64).astype(np.uint32),
                       numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)  # (a tuple holding a numpy array: checkpoints written before 2027-01)
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, torch.Tensor):  # pretraining checkpoints before 2026-12: the current device's alone
        torch.cuda.set_rng_state(cuda)
        return
    for device, device_state in enumerate(cuda[:torch.cuda.device_count()]):  # resumed on fewer GPUs: theirs
        torch.cuda.set_rng_state(device_state, device)
