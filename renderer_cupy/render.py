"""``render_gaussians``: the public entry point, backend choice and the shared geometry step."""
from __future__ import annotations

import torch

from ._torch_impl import render_dense
from .backend_cpu import CpuRender
from .backend_cupy import CupyRender, cupy_available
from .geometry import MEAN_LIMIT, gaussian_conics
from .validation import check_inputs


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` is ``"cupy"`` for CUDA tensors when CuPy imports, otherwise ``"cpu"``."""
    if backend == "auto":
        return "cupy" if device.type == "cuda" and cupy_available() else "cpu"
    if backend == "cupy":
        if device.type != "cuda":
            raise ValueError(f"backend='cupy' needs CUDA tensors, but means is on {device}")
        if not cupy_available():
            raise ValueError("backend='cupy' needs CuPy, which is not importable here "
                             "(pip install cupy-cuda13x)")
    return backend


def render_gaussians(means, scales, quats, intensities, shape, *, mask=None, cutoff=3.0, backend="auto"):
    """Render B volumes of K anisotropic 3D Gaussians each at the voxel centres of a (D, H, W) grid.

    Args:
        means: [B, K, 3] centres in normalised coordinates [0, 1]^3, ordered (z, y, x); voxel
            (i, j, k) has its centre at ((i + .5)/D, (j + .5)/H, (k + .5)/W).
        scales: [B, K, 3] standard deviations along the Gaussian's own axes, normalised units
            (clamped to [1e-5, 1e3]).
        quats: [B, K, 4] rotations as (w, x, y, z), normalised here; Sigma = R diag(s^2) R^T with the
            standard rotation matrix applied to (z, y, x)-ordered vectors.
        intensities: [B, K] value of each Gaussian at its centre.
        shape: (D, H, W).
        mask: optional bool [B, D, H, W]; only these voxels are rendered, the rest are 0.
        cutoff: a Gaussian contributes to voxel x only where d^T Sigma^-1 d <= cutoff^2, d = x - mu.
        backend: "auto", "cupy" (CUDA), "cpu" (numba) or "torch" (dense reference).

    Returns:
        [B, 1, D, H, W]: sum_i I_i exp(-d^T Sigma_i^-1 d / 2) over the Gaussians in range; float32
        (float64 when the parameters are float64, e.g. for gradcheck). Differentiable in means,
        scales, quats and intensities.

    Raises:
        ValueError: NaN/Inf parameters, wrong shapes, dtypes or devices, or an unknown backend.
    """
    dims = check_inputs(means, scales, quats, intensities, shape, mask, cutoff, backend)
    device = means.device
    backend = resolve_backend(backend, device)
    params = (means, scales, quats, intensities)
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in params) else torch.float32
    # Under autocast (bf16 pretraining) the geometry's matmuls would drop to half precision;
    # the renderer always computes in float32 or float64.
    with torch.autocast(device_type=device.type, enabled=False):
        means, scales, quats, intensities = (t.to(dtype) for t in params)
        means = means.clamp(-MEAN_LIMIT, MEAN_LIMIT)
        conics, radii = gaussian_conics(scales, quats, float(cutoff))
        out = _rasterize(backend, means, conics, intensities, radii, mask, dims, float(cutoff))
    return out.unsqueeze(1)


def _rasterize(backend, means, conics, intensities, radii, mask, dims, cutoff):
    """[B, D, H, W] from the per-Gaussian geometry, on the chosen backend."""
    if backend == "torch":
        return render_dense(means, conics, intensities, dims, mask, cutoff)
    if backend == "cupy":
        return CupyRender.apply(means, conics, intensities, radii, mask, dims, cutoff)
    device = means.device
    if device.type != "cpu":  # "auto" without CuPy, or an explicit request: compute on the host
        cpu = torch.device("cpu")
        host_mask = None if mask is None else mask.to(cpu)
        host = CpuRender.apply(means.to(cpu), conics.to(cpu), intensities.to(cpu), radii.to(cpu),
                               host_mask, dims, cutoff)
        return host.to(device)
    return CpuRender.apply(means, conics, intensities, radii, mask, dims, cutoff)
