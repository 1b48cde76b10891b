"""Per-Gaussian geometry shared by every backend, in plain differentiable torch.

The kernels never see scales or quaternions. They consume each Gaussian's *conic* (the precision
matrix ``Sigma^-1`` as its six unique entries) and the half-extent of its axis-aligned culling box,
and their backward passes return per-Gaussian *moments* of the voxel gradients. Going from
(scales, quats) to conics, and from moments to gradients, is O(B*K) work done here, so autograd
carries the chain rule through the quaternion normalisation and no kernel has to.

Layouts (all ordered z, y, x like the volume axes):
    conic   [..., 6]  = (A_zz, A_zy, A_zx, A_yy, A_yx, A_xx),  A = Sigma^-1
    radii   [..., 3]  = cutoff * sqrt(diag(Sigma))              (culling box half-extent)
    moments [..., 10] = (S0, S1_z, S1_y, S1_x, S2_zz, S2_zy, S2_zx, S2_yy, S2_yx, S2_xx)
        with, summed over the rendered voxels v inside the Gaussian's ellipsoid,
        w_v = grad_out[v] * exp(-q_v / 2), d_v = x_v - mu,
        S0 = sum w_v,  S1 = sum w_v d_v,  S2 = sum w_v d_v d_v^T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Standard deviations are clamped to this range (normalised units) before anything is inverted.
# The floor keeps Sigma^-1 finite for scales at or near 0 (a hundred-thousandth of the volume is
# far below a voxel on any realistic grid); the ceiling keeps s^2 finite in float32.
MIN_SCALE = 1e-5
MAX_SCALE = 1e3
# Means are clamped to this box: a Gaussian further out than this cannot reach the volume at any
# scale below MAX_SCALE's useful range, and the clamp keeps d^T A d finite in the dense reference.
MEAN_LIMIT = 1e3

CONIC_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] stored as (w, x, y, z).

    The quaternion is normalised here (a zero quaternion becomes the identity rotation instead of
    NaN). The standard matrix is applied to coordinate vectors as they are stored, i.e. in the
    toolkit's (z, y, x) order: scale axis j of a Gaussian points along column j of R.
    """
    q = F.normalize(quats, dim=-1, eps=1e-12)
    w, x, y, z = q.unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def gaussian_conics(scales: torch.Tensor, quats: torch.Tensor, cutoff: float):
    """Conics [B, K, 6] (differentiable) and culling half-extents [B, K, 3] (detached).

    A = R diag(1/s^2) R^T is built directly (no matrix inverse). The half-extent of the
    axis-aligned box around the ellipsoid d^T A d <= cutoff^2 is cutoff * sqrt(Sigma_dd), with
    Sigma_dd = sum_j R_dj^2 s_j^2.
    """
    var = (scales * scales).clamp(MIN_SCALE**2, MAX_SCALE**2)  # [B,K,3]
    rot = quat_to_rotmat(quats)  # [B,K,3,3]
    precision = (rot / var.unsqueeze(-2)) @ rot.transpose(-1, -2)  # R diag(1/var) R^T
    rows, cols = zip(*CONIC_PAIRS)
    conics = precision[..., rows, cols]
    with torch.no_grad():
        sigma_diag = (rot * rot * var.unsqueeze(-2)).sum(-1)
        radii = cutoff * sigma_diag.sqrt()
    return conics, radii


def conic_matrix(conics: torch.Tensor) -> torch.Tensor:
    """The symmetric 3x3 matrices [..., 3, 3] of conics [..., 6]."""
    azz, azy, azx, ayy, ayx, axx = conics.unbind(-1)
    return torch.stack(
        (
            torch.stack((azz, azy, azx), -1),
            torch.stack((azy, ayy, ayx), -1),
            torch.stack((azx, ayx, axx), -1),
        ),
        dim=-2,
    )


# d(q)/d(conic entry): diagonal entries appear once in d^T A d, off-diagonal ones twice.
_CONIC_MULTIPLICITY = (1.0, 2.0, 2.0, 1.0, 2.0, 1.0)


def gradients_from_moments(moments: torch.Tensor, conics: torch.Tensor, intensities: torch.Tensor):
    """Gradients (means [B,K,3], conics [B,K,6], intensities [B,K]) from moments [B,K,10].

    With value_v = I exp(-q_v/2), q_v = d_v^T A d_v and d_v = x_v - mu:
        dL/dI  = S0
        dL/dmu = I * A S1                   (dq/dmu = -2 A d)
        dL/dA  = -I/2 * S2 * multiplicity   (dq/dA_ab = d_a d_b, off-diagonals counted twice)
    """
    s0, s1, s2 = moments[..., 0], moments[..., 1:4], moments[..., 4:10]
    amat = conic_matrix(conics)
    grad_means = intensities.unsqueeze(-1) * (amat @ s1.unsqueeze(-1)).squeeze(-1)
    mult = s2.new_tensor(_CONIC_MULTIPLICITY)
    grad_conics = -0.5 * intensities.unsqueeze(-1) * s2 * mult
    return grad_means, grad_conics, s0
