"""Projectors and FBP/FDK: against scikit-image's radon/iradon, adjoint = transpose, phantom PSNR."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from medgmae_trainers.reconstruction.fbp import fbp_parallel, fdk_cone
from medgmae_trainers.reconstruction.metrics import psnr
from medgmae_trainers.reconstruction.projectors import ConeBeamProjector, ParallelBeamProjector

N = 33  # odd: scikit-image's rotation centre N // 2 is then the geometric centre (N - 1) / 2 we use


def disc_phantom(n: int = N, slices: int = 3) -> np.ndarray:
    """Shepp-Logan slices [slices, n, n], zero outside the inscribed circle (radon's circle=True)."""
    img = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    yy, xx = np.mgrid[:n, :n] - n // 2
    img[yy ** 2 + xx ** 2 > (n // 2) ** 2] = 0
    return np.stack([img * (1 + 0.3 * k) for k in range(slices)])


def ellipsoids(shape) -> np.ndarray:
    """A smooth 3D phantom in [0, 1]: body, a bright organ, a dark one."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    v = np.zeros(shape)
    v[(x / 0.7) ** 2 + (y / 0.6) ** 2 + (z / 0.8) ** 2 < 1] = 0.5
    v[((x - 0.2) / 0.2) ** 2 + (y / 0.3) ** 2 + ((z - 0.1) / 0.3) ** 2 < 1] = 1.0
    v[((x + 0.3) / 0.15) ** 2 + ((y + 0.1) / 0.15) ** 2 + ((z + 0.2) / 0.25) ** 2 < 1] = 0.2
    return gaussian_filter(v, 1.0)


def test_parallel_projector_matches_skimage_radon_slice_by_slice():
    vol = disc_phantom()
    theta = np.arange(24) * 180.0 / 24
    proj = ParallelBeamProjector(vol.shape, 24, num_detectors=N, dtype=torch.float64)
    sino = proj(torch.from_numpy(vol)).numpy()                      # [V, D, n_det]
    for z in range(vol.shape[0]):
        ref = radon(vol[z], theta, circle=True)                      # [n_det, V]
        np.testing.assert_allclose(sino[:, z, :].T, ref, atol=1e-8 * np.abs(ref).max())


def test_fbp_matches_skimage_iradon_inside_the_circle():
    vol = disc_phantom(slices=2)
    theta = np.arange(40) * 180.0 / 40
    proj = ParallelBeamProjector(vol.shape, 40, dtype=torch.float64)   # default detector: the slice's diagonal
    rec = fbp_parallel(proj, proj(torch.from_numpy(vol))).numpy()
    inside = (np.mgrid[:N, :N] - N // 2) ** 2
    inside = inside.sum(0) <= (N // 2) ** 2
    for z in range(vol.shape[0]):
        ref = iradon(radon(vol[z], theta, circle=True), theta, circle=True, filter_name="ramp")
        np.testing.assert_allclose(rec[z][inside], ref[inside], atol=1e-8)


@pytest.mark.parametrize("make", [
    lambda: ParallelBeamProjector((5, 12, 14), 7, dtype=torch.float64),
    lambda: ConeBeamProjector((10, 12, 14), 6, dtype=torch.float64),
], ids=["parallel", "cone"])
def test_adjoint_is_the_transpose(make):
    proj = make()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(proj.shape, generator=gen, dtype=torch.float64)
    y = torch.randn(proj.sinogram_shape, generator=gen, dtype=torch.float64)
    lhs = float((proj(x) * y).sum())
    rhs = float((x * proj.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)
    # and autograd's backward through the projector is the same operator
    xg = x.clone().requires_grad_(True)
    (proj(xg) * y).sum().backward()
    torch.testing.assert_close(xg.grad, proj.adjoint(y))


def test_cone_beam_tends_to_parallel_beam_far_from_the_source():
    """With the source very far away, the cone's middle detector row is the parallel sinogram of that slice."""
    vol = torch.from_numpy(ellipsoids((9, 16, 16)))
    cone = ConeBeamProjector(vol.shape, 8, source_distance=1e5, dtype=torch.float64)
    par = ParallelBeamProjector(vol.shape, 8, num_detectors=cone.detector[1], dtype=torch.float64,
                                angles_deg=cone.angles_deg)
    mid_row = cone(vol)[:, cone.detector[0] // 2, :]
    torch.testing.assert_close(mid_row, par(vol)[:, 4, :], atol=1e-2 * float(mid_row.abs().max()), rtol=0)


def test_fbp_of_a_phantom_from_many_views_reaches_40_db():
    vol = torch.from_numpy(ellipsoids((8, 32, 32))).float()
    proj = ParallelBeamProjector(vol.shape, 180)
    assert psnr(fbp_parallel(proj, proj(vol)), vol) >= 40.0     # measured 45.9 dB


def test_fdk_of_a_phantom_from_many_views_reaches_35_db():
    vol = torch.from_numpy(ellipsoids((24, 24, 24))).float()
    proj = ConeBeamProjector(vol.shape, 120)
    assert psnr(fdk_cone(proj, proj(vol)), vol) >= 35.0         # measured about 40 dB at 32^3, 180 views
