"""bf16 autocast: on every CUDA device, and on a CPU only where it computes bf16 natively.

On a CPU with AMX or AVX512-BF16 (oneDNN's bf16 convolutions and matmuls), a tiny-UNETR training
step at 48^3 takes 0.26 s instead of 0.50 s on two cores, and 0.40 s instead of 0.86 s on one
(docs/results.md, "Fine-tuning iteration cost"). Without those instructions bf16 is emulated and
slower than float32, which is why nnU-Net never autocasts on a CPU; so the CPU needs both the
caller's consent (`cpu=True`) and the hardware. Weights, optimiser state and the loss stay float32.
"""
from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache  # the hardware does not change; asked at every training step
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def bf16_autocast(device: torch.device, cpu: bool = False):
    """The autocast context for a forward pass on `device` (a no-op where bf16 would not pay)."""
    if device.type == "cuda" or (device.type == "cpu" and cpu and native_cpu_bf16()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
