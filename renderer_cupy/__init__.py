"""Differentiable 3D Gaussian-field renderer (MedGMAE section 3.1, appendix 7.5).

    render_gaussians(means, scales, quats, intensities, shape, *, mask=None, cutoff=3.0, backend="auto")

Backends: "cupy" (CUDA kernels in ``kernels.cu`` via CuPy RawModule), "cpu" (numba, culled),
"torch" (dense reference). Importing this package needs only torch; numba and CuPy are loaded
when their backend is first used.
"""
from .render import render_gaussians, resolve_backend
from .validation import BACKENDS

__all__ = ["render_gaussians", "resolve_backend", "BACKENDS"]
