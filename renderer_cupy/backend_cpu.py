"""The ``"cpu"`` backend: a thin autograd Function around the numba kernels in ``_cpu_kernels``.

numba is imported on first use, so ``import renderer_cupy`` needs only torch. The first call in a
fresh environment compiles the kernels (cached on disk by numba, ``cache=True``, afterwards).
Work is split into ranges run on a thread pool of ``torch.get_num_threads()`` workers (the
kernels release the GIL); idle workers sleep, so they never compete with torch's own threads.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .geometry import gradients_from_moments

_kernels = None
_pool = None
_pool_key = None  # (process id, threads): a forked child or a new thread count gets a new pool
_pool_lock = threading.Lock()
# Ranges per worker: enough for Gaussians (or slices) of uneven cost to balance out.
_RANGES_PER_THREAD = 4


def _load_kernels():
    global _kernels
    if _kernels is None:
        from . import _cpu_kernels

        _kernels = _cpu_kernels
    return _kernels


def _run_ranges(kernel, args, items: int):
    """kernel(*args, first, stop) over [0, items), in ranges spread over the worker threads."""
    global _pool, _pool_key
    threads = max(1, torch.get_num_threads())
    if threads == 1 or items < 2:
        kernel(*args, 0, items)
        return
    with _pool_lock:
        key = (os.getpid(), threads)
        if _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="renderer_cpu")
            _pool_key = key
        pool = _pool
    n = min(items, threads * _RANGES_PER_THREAD)
    bounds = [items * i // n for i in range(n + 1)]
    futures = [pool.submit(kernel, *args, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for f in futures:
        f.result()


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _mask_args(mask, B):
    """(mask uint8 [B,D,H,W], rows uint8 [B,D,H], use_mask); dummies keep the signature fixed."""
    if mask is None:
        n = max(B, 1)
        return np.ones((n, 1, 1, 1), dtype=np.uint8), np.ones((n, 1, 1), dtype=np.uint8), False
    return _as_numpy(mask).view(np.uint8), _as_numpy(mask.any(-1)).view(np.uint8), True


class CpuRender(torch.autograd.Function):
    """means [B,K,3], conics [B,K,6], intensities [B,K], radii [B,K,3] -> [B,D,H,W]."""

    @staticmethod
    def forward(ctx, means, conics, intensities, radii, mask, shape, cutoff):
        kernels = _load_kernels()
        B = means.shape[0]
        out = torch.zeros((B, *shape), dtype=means.dtype)
        mask_np, rows_np, use_mask = _mask_args(mask, B)
        args = (_as_numpy(means), _as_numpy(conics), _as_numpy(intensities), _as_numpy(radii),
                mask_np, rows_np, use_mask, float(cutoff) ** 2, out.numpy())
        _run_ranges(kernels.render_forward, args, B * shape[0])
        ctx.save_for_backward(means, conics, intensities, radii, mask)
        ctx.shape, ctx.cutoff = shape, cutoff
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        means, conics, intensities, radii, mask = ctx.saved_tensors
        kernels = _load_kernels()
        B, K = intensities.shape
        moments = torch.zeros((B, K, 10), dtype=means.dtype)
        mask_np, rows_np, use_mask = _mask_args(mask, B)
        args = (_as_numpy(means), _as_numpy(conics), _as_numpy(radii), mask_np, rows_np, use_mask,
                float(ctx.cutoff) ** 2, _as_numpy(grad_out.to(means.dtype)), moments.numpy())
        _run_ranges(kernels.render_backward, args, B * K)
        grad_means, grad_conics, grad_int = gradients_from_moments(moments, conics, intensities)
        return grad_means, grad_conics, grad_int, None, None, None, None
