"""The ``"cupy"`` backend: ``kernels.cu`` compiled once per device with ``cupy.RawModule`` (NVRTC),
launched on PyTorch's current stream, wrapped in a thin autograd Function.

Tensors reach the kernels as raw device pointers, so no copies and no extra synchronisation:
PyTorch and CuPy share the CUDA runtime's primary context, and both kernels are enqueued on the
stream torch would have used, so they are ordered with the surrounding torch work.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from .geometry import gradients_from_moments

SOURCE_PATH = Path(__file__).with_name("kernels.cu")
KERNEL_NAMES = {
    (name, dtype): f"{name}<{ctype}>"
    for name in ("render_forward", "render_backward")
    for dtype, ctype in ((torch.float32, "float"), (torch.float64, "double"))
}
# CuPy >= 14 adds -std=c++17 itself unless a standard is given; name it, spelled as CuPy does.
NVRTC_OPTIONS = ("--std=c++17",)
# Must match kernels.cu.
TILE = (4, 8, 8)
BLOCK_THREADS = 256
NUM_MOMENTS = 10

_modules: dict = {}
_lock = threading.Lock()


def cupy_available() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def _module(device_index: int):
    """The compiled RawModule of ``device_index``, built on first use."""
    with _lock:
        module = _modules.get(device_index)
        if module is None:
            import cupy

            with cupy.cuda.Device(device_index):
                module = cupy.RawModule(
                    code=SOURCE_PATH.read_text(),
                    options=NVRTC_OPTIONS,
                    name_expressions=list(KERNEL_NAMES.values()),
                )
                module.compile()
            _modules[device_index] = module
        return module


def _cupy_stream(device: torch.device):
    import cupy

    stream = torch.cuda.current_stream(device)
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(stream, "__cuda_stream__"):
        return from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device.index)


def _ptr(t) -> np.uint64:
    return np.uint64(0 if t is None else t.data_ptr())


def _launch(name: str, tensors, out_args, K: int, shape, cutoff: float, B: int, device, dtype):
    D, H, W = shape
    if B == 0:
        return
    import cupy

    tiles = -(-D // TILE[0]) * -(-H // TILE[1]) * -(-W // TILE[2])
    scalar = np.float32 if dtype == torch.float32 else np.float64
    kernel = _module(device.index).get_function(KERNEL_NAMES[(name, dtype)])
    args = tuple(_ptr(t) for t in (*tensors, *out_args)) + (
        np.int32(K), np.int32(D), np.int32(H), np.int32(W), scalar(float(cutoff) ** 2),
    )
    with cupy.cuda.Device(device.index), _cupy_stream(device):
        kernel((tiles * B, 1, 1), (BLOCK_THREADS, 1, 1), args)


def _mask_u8(mask):
    return None if mask is None else mask.contiguous().view(torch.uint8)


class CupyRender(torch.autograd.Function):
    """means [B,K,3], conics [B,K,6], intensities [B,K], radii [B,K,3] -> [B,D,H,W] (CUDA)."""

    @staticmethod
    def forward(ctx, means, conics, intensities, radii, mask, shape, cutoff):
        means, conics, intensities, radii = (t.contiguous() for t in (means, conics, intensities, radii))
        mask_u8 = _mask_u8(mask)
        B, K = intensities.shape
        out = torch.zeros((B, *shape), dtype=means.dtype, device=means.device)
        _launch("render_forward", (means, conics, intensities, radii, mask_u8), (out,),
                K, shape, cutoff, B, means.device, means.dtype)
        ctx.save_for_backward(means, conics, intensities, radii, mask_u8)
        ctx.shape, ctx.cutoff = shape, cutoff
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        means, conics, intensities, radii, mask_u8 = ctx.saved_tensors
        B, K = intensities.shape
        grad_out = grad_out.to(means.dtype).contiguous()
        moments = torch.zeros((B, K, NUM_MOMENTS), dtype=means.dtype, device=means.device)
        _launch("render_backward", (means, conics, intensities, radii, mask_u8, grad_out), (moments,),
                K, ctx.shape, ctx.cutoff, B, means.device, means.dtype)
        grad_means, grad_conics, grad_int = gradients_from_moments(moments, conics, intensities)
        return grad_means, grad_conics, grad_int, None, None, None, None
