"""Numba kernels of the ``"cpu"`` backend (imported lazily: ``import renderer_cupy`` needs no numba).

Both kernels visit only the voxels of each Gaussian's ellipsoid, never the whole volume. The z and
y ranges come from the culling box (with one voxel of slack against rounding). Along each (z, y)
row, q(dx) = a dx^2 + 2 l dx + c is a parabola, so a row is swept outwards from its smallest-q
voxel in both directions and each sweep stops at the first voxel with q > cutoff^2: every voxel is
tested with q <= cutoff^2 computed directly, which is exactly the contract's ellipsoid rule.

Along a sweep exp(-q/2) is not called per voxel: consecutive values differ by a factor
r = exp(-(q(x+1) - q(x))/2), and r itself changes by the constant factor exp(-a h^2) per step
(the parabola's second difference), so each voxel costs two multiplications instead of an exp.
Sweeping outwards keeps every factor <= 1, so nothing overflows; in float64 the product drifts by
~1e-16 per step, far below float32 output precision.

Each kernel does one range of independent work items and releases the GIL (``nogil``), so the
backend runs ranges on a plain thread pool: no second spinning OpenMP pool fighting torch's for
the same cores. Work items never write to the same place: a forward item is one (batch, z) slice
of the output, a backward item is one Gaussian (it accumulates its own ten moments over its own
ellipsoid). All arithmetic is float64; outputs take the dtype of the arrays they are written to.

Inputs (C-contiguous numpy arrays, float32 or float64; see ``geometry`` for the layouts):
    means [B,K,3], conics [B,K,6], intensities [B,K], radii [B,K,3],
    mask uint8 [B,D,H,W] and rows uint8 [B,D,H] = mask.any(-1), so rows with nothing to render
    are skipped whole (any 4-d / 3-d arrays when use_mask is False).
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _index_range(centre, lo, hi, n):
    """Voxel indices i in [0, n) whose centre offset (i + .5)/n - centre may lie in [lo, hi],
    widened by one voxel each side; returns (first, last), empty when first > last."""
    first = math.ceil((centre + lo) * n - 0.5) - 1.0
    last = math.floor((centre + hi) * n - 0.5) + 1.0
    first = max(first, 0.0)
    last = min(last, n - 1.0)
    if first > last:
        return 0, -1
    return int(first), int(last)


@numba.njit(cache=True, inline="always")
def _row_start(a, lin, n, centre):
    """The in-volume voxel of a row closest to the parabola's minimum at dx = -lin/a, and its dx."""
    x = (centre - lin / a) * n - 0.5
    x = min(max(x, 0.0), n - 1.0)
    xc = int(x + 0.5)
    return xc, (xc + 0.5) / n - centre


@numba.njit(cache=True, inline="always")
def _first_ratios(a, lin, dxc, h, rho):
    """exp(-(q(dx + h) - q(dx)) / 2) and exp(-(q(dx - h) - q(dx)) / 2) at dx = dxc.

    The two exponents add up to the second difference 2 a h^2, so the ratios multiply to rho:
    the second costs a division instead of an exp unless the first has underflowed."""
    right = math.exp(-0.5 * (a * h * (2.0 * dxc + h) + 2.0 * lin * h))
    if right > 1e-100:
        return right, rho / right
    return right, math.exp(-0.5 * (a * h * (h - 2.0 * dxc) - 2.0 * lin * h))


@numba.njit(cache=True, inline="always")
def _conic(conics, b, k):
    """The six inverse-covariance entries (zz, zy, zx, yy, yx, xx) of Gaussian (b, k), in float64."""
    c = conics[b, k]
    return (np.float64(c[0]), np.float64(c[1]), np.float64(c[2]), np.float64(c[3]), np.float64(c[4]),
            np.float64(c[5]))


@numba.njit(cache=True, inline="always")
def _row(azz, azy, azx, ayy, ayx, axx, dz, dy, mx, W, h, rho, cutoff2):
    """Everything a sweep along the (dz, dy) row needs: (hit, xc, ec, r_right, r_left, lin, const).

    q(dx) = axx dx^2 + 2 lin dx + const along the row; xc is the in-volume voxel nearest its minimum,
    ec = exp(-q/2) there, r_right / r_left the first step ratios. hit is False when even xc lies
    outside the cut-off ellipsoid, i.e. the row misses the Gaussian."""
    lin = azx * dz + ayx * dy
    const = azz * dz * dz + 2.0 * azy * dz * dy + ayy * dy * dy
    xc, dxc = _row_start(axx, lin, W, mx)
    qc = (axx * dxc + 2.0 * lin) * dxc + const
    if qc > cutoff2:
        return False, xc, 0.0, 0.0, 0.0, lin, const
    r_right, r_left = _first_ratios(axx, lin, dxc, h, rho)
    return True, xc, math.exp(-0.5 * max(qc, 0.0)), r_right, r_left, lin, const


@numba.njit(nogil=True, cache=True)
def render_forward(means, conics, intensities, radii, mask, rows, use_mask, cutoff2, out, first, stop):
    """out [B,D,H,W] (zero-initialised) += the Gaussians, for flat slices b*D + z in [first, stop)."""
    B, D, H, W = out.shape
    K = means.shape[1]
    h = 1.0 / W
    for bz in range(first, stop):
        b = bz // D
        z = bz - b * D
        for k in range(K):
            mz = np.float64(means[b, k, 0])
            dz = (z + 0.5) / D - mz
            if abs(dz) > radii[b, k, 0] + 1.0 / D:
                continue
            my = np.float64(means[b, k, 1])
            mx = np.float64(means[b, k, 2])
            ry = np.float64(radii[b, k, 1])
            y0, y1 = _index_range(my, -ry, ry, H)
            azz, azy, azx, ayy, ayx, axx = _conic(conics, b, k)
            inten = np.float64(intensities[b, k])
            rho = math.exp(-axx * h * h)
            for y in range(y0, y1 + 1):
                if use_mask and rows[b, z, y] == 0:
                    continue
                hit, xc, ec, r_right, r_left, lin, const = _row(azz, azy, azx, ayy, ayx, axx, dz,
                                                                (y + 0.5) / H - my, mx, W, h, rho, cutoff2)
                if not hit:
                    continue
                for step in (1, -1):
                    if step == 1:
                        x, e, r = xc, ec, r_right
                    else:
                        x, e, r = xc - 1, ec * r_left, r_left * rho
                    while 0 <= x < W:
                        dx = (x + 0.5) * h - mx
                        if (axx * dx + 2.0 * lin) * dx + const > cutoff2:
                            break
                        if not use_mask or mask[b, z, y, x] != 0:
                            out[b, z, y, x] += inten * e
                        e *= r
                        r *= rho
                        x += step


@numba.njit(nogil=True, cache=True)
def render_backward(means, conics, radii, mask, rows, use_mask, cutoff2, grad_out, moments, first, stop):
    """moments [B,K,10] of grad_out [B,D,H,W], for flat Gaussians b*K + k in [first, stop)."""
    B, D, H, W = grad_out.shape
    K = means.shape[1]
    h = 1.0 / W
    for bk in range(first, stop):
        b = bk // K
        k = bk - b * K
        mz = np.float64(means[b, k, 0])
        my = np.float64(means[b, k, 1])
        mx = np.float64(means[b, k, 2])
        azz, azy, azx, ayy, ayx, axx = _conic(conics, b, k)
        rz = np.float64(radii[b, k, 0])
        ry = np.float64(radii[b, k, 1])
        z0, z1 = _index_range(mz, -rz, rz, D)
        y0, y1 = _index_range(my, -ry, ry, H)
        rho = math.exp(-axx * h * h)
        s0 = s1z = s1y = s1x = 0.0
        szz = szy = szx = syy = syx = sxx = 0.0
        for z in range(z0, z1 + 1):
            dz = (z + 0.5) / D - mz
            for y in range(y0, y1 + 1):
                if use_mask and rows[b, z, y] == 0:
                    continue
                dy = (y + 0.5) / H - my
                hit, xc, ec, r_right, r_left, lin, const = _row(azz, azy, azx, ayy, ayx, axx, dz, dy, mx, W, h,
                                                                rho, cutoff2)
                if not hit:
                    continue
                # dz and dy are constant along the row: sum w, w dx, w dx^2 here and expand
                # them into the ten moments once per row.
                rw = rwx = rwxx = 0.0
                for step in (1, -1):
                    if step == 1:
                        x, e, r = xc, ec, r_right
                    else:
                        x, e, r = xc - 1, ec * r_left, r_left * rho
                    while 0 <= x < W:
                        dx = (x + 0.5) * h - mx
                        if (axx * dx + 2.0 * lin) * dx + const > cutoff2:
                            break
                        if not use_mask or mask[b, z, y, x] != 0:
                            w = np.float64(grad_out[b, z, y, x]) * e
                            rw += w
                            rwx += w * dx
                            rwxx += w * dx * dx
                        e *= r
                        r *= rho
                        x += step
                s0 += rw
                s1z += rw * dz
                s1y += rw * dy
                s1x += rwx
                szz += rw * dz * dz
                szy += rw * dz * dy
                szx += rwx * dz
                syy += rw * dy * dy
                syx += rwx * dy
                sxx += rwxx
        moments[b, k, 0] = s0
        moments[b, k, 1] = s1z
        moments[b, k, 2] = s1y
        moments[b, k, 3] = s1x
        moments[b, k, 4] = szz
        moments[b, k, 5] = szy
        moments[b, k, 6] = szx
        moments[b, k, 7] = syy
        moments[b, k, 8] = syx
        moments[b, k, 9] = sxx
