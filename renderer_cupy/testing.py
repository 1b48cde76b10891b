"""Random Gaussian sets and comparison helpers shared by the renderer tests (like numpy.testing)."""
from __future__ import annotations

import torch

from .render import render_gaussians


def random_gaussians(B=2, K=24, *, seed=0, dtype=torch.float64, device="cpu", outside=0.2,
                     scale=(0.04, 0.25)):
    """Rotated anisotropic Gaussians; means in [-outside, 1+outside]^3, so some straddle the border
    and some lie wholly outside. Returns (means, scales, quats, intensities)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(B, K, 3, generator=g, dtype=torch.float64) * (1 + 2 * outside) - outside
    lo, hi = scale
    scales = lo + (hi - lo) * torch.rand(B, K, 3, generator=g, dtype=torch.float64)
    quats = torch.randn(B, K, 4, generator=g, dtype=torch.float64)  # not normalised on purpose
    intensities = torch.rand(B, K, generator=g, dtype=torch.float64) * 2 - 0.5
    return [t.to(device=device, dtype=dtype) for t in (means, scales, quats, intensities)]


def random_mask(B, shape, *, seed=1, keep=0.7, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, *shape, generator=g) < keep).to(device)


def value_and_grads(params, shape, *, backend, mask=None, cutoff=3.0, cotangent=None, seed=2):
    """Render, contract with a random cotangent, and return (output, cotangent, grads)."""
    leaves = [p.detach().clone().requires_grad_() for p in params]
    out = render_gaussians(*leaves, shape, mask=mask, cutoff=cutoff, backend=backend)
    if cotangent is None:
        g = torch.Generator().manual_seed(seed)
        cotangent = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * cotangent.to(out)).sum(), leaves)
    return out.detach(), cotangent, [gr.detach() for gr in grads]


def assert_grads_close(got, want, rtol, names=("means", "scales", "quats", "intensities")):
    """Each gradient within rtol of the reference, relative to the reference's largest entry."""
    for name, a, b in zip(names, got, want):
        a, b = a.double().cpu(), b.double().cpu()
        scale = b.abs().max().clamp_min(1e-12)
        err = ((a - b).abs().max() / scale).item()
        assert err <= rtol, f"grad {name}: relative error {err:.3g} > {rtol}"
