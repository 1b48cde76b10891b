"""Plain-torch twins of the kernels: dense, O(K*V), chunked over voxels, written to be read.

``render_dense`` is the ``"torch"`` backend and the reference every other backend is tested
against; its gradients come from autograd, independently of the hand-derived backward kernels.
Each voxel chunk runs under activation checkpointing, so the backward pass recomputes one chunk
at a time and never holds a K x V tensor. ``moments_dense`` is the twin of the backward kernels
(same outputs as theirs, see ``geometry`` for the moment layout), used to test them directly.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

# Elements of one [B, K, chunk] intermediate; a dozen of them are alive at once.
_CHUNK_ELEMENTS = 1 << 21


def voxel_centres(shape, start: int, stop: int, device, dtype) -> torch.Tensor:
    """Normalised (z, y, x) centres [stop-start, 3] of flat voxel indices [start, stop)."""
    D, H, W = shape
    flat = torch.arange(start, stop, device=device)
    idx = torch.stack((flat // (H * W), (flat // W) % H, flat % W), dim=-1)
    size = torch.tensor((D, H, W), device=device, dtype=dtype)
    return (idx.to(dtype) + 0.5) / size


def _offsets_and_q(pos, means, conics):
    """Offsets d = x - mu [B,K,C,3] and Mahalanobis terms q = d^T A d [B,K,C]."""
    d = pos[None, None] - means[:, :, None, :]
    dz, dy, dx = d.unbind(-1)
    azz, azy, azx, ayy, ayx, axx = (c[..., None] for c in conics.unbind(-1))
    q = azz * dz * dz + ayy * dy * dy + axx * dx * dx + 2 * (azy * dz * dy + azx * dz * dx + ayx * dy * dx)
    return d, q


def _gaussian_weights(q, cutoff2: float):
    """exp(-q/2) inside the cutoff ellipsoid, 0 outside. q is clamped at 0 because rounding can
    push it slightly negative for very elongated Gaussians, where exp(-q/2) must not blow up."""
    return torch.where(q <= cutoff2, torch.exp(-0.5 * q.clamp_min(0)), torch.zeros_like(q))


def _render_chunk(pos, means, conics, intensities, cutoff2: float):
    """Values [B, C] at voxel centres pos [C, 3]."""
    _, q = _offsets_and_q(pos, means, conics)
    return (intensities[..., None] * _gaussian_weights(q, cutoff2)).sum(1)


def _chunk_size(B: int, K: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, B * K))


def render_dense(means, conics, intensities, shape, mask, cutoff: float) -> torch.Tensor:
    """Render [B, D, H, W] by evaluating every Gaussian at every voxel.

    means [B,K,3], conics [B,K,6], intensities [B,K]; mask None or bool [B,D,H,W] (voxels outside
    it are 0; whole chunks outside it are skipped, the rest is computed densely and zeroed).
    The first chunk is always evaluated, so the output stays attached to the autograd graph even
    when nothing is rendered (B = 0, or an empty mask).
    """
    B, K = intensities.shape
    D, H, W = shape
    V = D * H * W
    cutoff2 = float(cutoff) ** 2
    flat_mask = None if mask is None else mask.reshape(B, V)
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (means, conics, intensities))
    step = _chunk_size(B, K)
    pieces = []
    for start in range(0, V, step):
        stop = min(start + step, V)
        if flat_mask is not None and start > 0 and not bool(flat_mask[:, start:stop].any()):
            pieces.append(intensities.new_zeros(B, stop - start))
            continue
        pos = voxel_centres(shape, start, stop, means.device, means.dtype)
        if track:
            pieces.append(
                checkpoint(_render_chunk, pos, means, conics, intensities, cutoff2, use_reentrant=False)
            )
        else:
            pieces.append(_render_chunk(pos, means, conics, intensities, cutoff2))
    out = torch.cat(pieces, dim=1)
    if flat_mask is not None:
        out = torch.where(flat_mask, out, torch.zeros_like(out))
    return out.reshape(B, D, H, W)


@torch.no_grad()
def moments_dense(means, conics, grad_out, shape, mask, cutoff: float) -> torch.Tensor:
    """Twin of the backward kernels: moments [B, K, 10] of grad_out [B, D, H, W] (see geometry)."""
    B, K = means.shape[:2]
    D, H, W = shape
    V = D * H * W
    cutoff2 = float(cutoff) ** 2
    g = grad_out.reshape(B, V)
    if mask is not None:
        g = torch.where(mask.reshape(B, V), g, torch.zeros_like(g))
    pairs = [(a, b) for a in range(3) for b in range(a, 3)]
    moments = means.new_zeros(B, K, 10)
    step = _chunk_size(B, K)
    for start in range(0, V, step):
        stop = min(start + step, V)
        pos = voxel_centres(shape, start, stop, means.device, means.dtype)
        d, q = _offsets_and_q(pos, means, conics)
        w = g[:, None, start:stop] * _gaussian_weights(q, cutoff2)  # [B,K,C]
        moments[..., 0] += w.sum(-1)
        moments[..., 1:4] += (w[..., None] * d).sum(-2)
        for i, (a, b) in enumerate(pairs):
            moments[..., 4 + i] += (w * d[..., a] * d[..., b]).sum(-1)
    return moments
