"""Argument checks for ``render_gaussians``: every problem is a ValueError naming the argument."""
from __future__ import annotations

import numbers

import torch

BACKENDS = ("auto", "cupy", "cpu", "torch")


def _check_tensor(name: str, t, trailing: int | None, ndim: int):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != ndim or (trailing is not None and t.shape[-1] != trailing):
        want = "[B, K]" if trailing is None else f"[B, K, {trailing}]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")


def _positive_int(d) -> bool:
    return isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0


def check_shape(shape) -> tuple[int, int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a (D, H, W) sequence of positive ints, got {shape!r}") from None
    if len(dims) != 3 or not all(_positive_int(d) for d in dims):
        raise ValueError(f"shape must be a (D, H, W) sequence of positive ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def check_inputs(means, scales, quats, intensities, shape, mask, cutoff, backend):
    """Validate everything; returns the normalised (D, H, W)."""
    _check_tensor("means", means, 3, 3)
    _check_tensor("scales", scales, 3, 3)
    _check_tensor("quats", quats, 4, 3)
    _check_tensor("intensities", intensities, None, 2)
    B, K = means.shape[:2]
    for name, t in (("scales", scales), ("quats", quats), ("intensities", intensities)):
        if tuple(t.shape[:2]) != (B, K):
            raise ValueError(f"{name} must have the same [B, K] = [{B}, {K}] as means, got {list(t.shape)}")
        if t.device != means.device:
            raise ValueError(f"{name} is on {t.device} but means is on {means.device}")
    dims = check_shape(shape)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a bool tensor [B, D, H, W], got {got}")
        if tuple(mask.shape) != (B, *dims):
            raise ValueError(f"mask must have shape {[B, *dims]}, got {list(mask.shape)}")
        if mask.device != means.device:
            raise ValueError(f"mask is on {mask.device} but means is on {means.device}")
    real = isinstance(cutoff, numbers.Real) and not isinstance(cutoff, bool)
    if not real or not 0 < float(cutoff) < float("inf"):
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    names = ("means", "scales", "quats", "intensities")
    tensors = (means, scales, quats, intensities)
    # One host synchronisation for all four checks.
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).tolist()
    for name, ok in zip(names, finite):
        if not ok:
            raise ValueError(f"{name} contains NaN or Inf")
    return dims
