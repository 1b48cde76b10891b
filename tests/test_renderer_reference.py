"""The renderer contract, checked on the dense torch reference (and the API shared by all backends).

The reference itself is checked against an independent numpy/scipy brute force, so the backend
comparisons in test_renderer_cpu.py / test_renderer_cupy.py compare against something trusted.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from renderer_cupy import _torch_impl, render_gaussians
from renderer_cupy.testing import random_gaussians, random_mask

FAST_BACKENDS = ("torch", "cpu")


def _bruteforce(means, scales, quats, intensities, shape, cutoff):
    """numpy: Sigma from scipy's rotation matrix, inverted with linalg.inv, summed per voxel."""
    B, K = intensities.shape
    D, H, W = shape
    zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) / n for n in shape], indexing="ij")
    pos = np.stack([zz, yy, xx], -1).reshape(-1, 3)
    out = np.zeros((B, D * H * W))
    for b in range(B):
        for k in range(K):
            w, x, y, z = quats[b, k]
            rot = Rotation.from_quat([x, y, z, w]).as_matrix()  # scipy stores (x, y, z, w)
            sigma = rot @ np.diag(scales[b, k] ** 2) @ rot.T
            d = pos - means[b, k]
            q = np.einsum("vi,ij,vj->v", d, np.linalg.inv(sigma), d)
            out[b] += np.where(q <= cutoff**2, intensities[b, k] * np.exp(-0.5 * q), 0.0)
    return out.reshape(B, 1, D, H, W)


def test_reference_matches_numpy_bruteforce():
    shape = (7, 10, 13)
    params = random_gaussians(B=2, K=9, seed=3)
    for cutoff in (3.0, 1.5):
        got = render_gaussians(*params, shape, cutoff=cutoff, backend="torch")
        want = _bruteforce(*[p.numpy() for p in params], shape, cutoff)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_axis_order_voxel_centres_and_quaternion_convention(backend):
    D, H, W = 8, 12, 20  # anisotropic: one voxel step is 1/D, 1/H, 1/W along z, y, x
    centre = (3, 5, 7)
    mu = torch.tensor([[[(c + 0.5) / n for c, n in zip(centre, (D, H, W))]]], dtype=torch.float64)
    s = torch.tensor([[[0.10, 0.05, 0.02]]], dtype=torch.float64)  # (z, y, x) std devs
    ident = torch.tensor([[[1.0, 0, 0, 0]]], dtype=torch.float64)
    inten = torch.tensor([[2.0]], dtype=torch.float64)
    out = render_gaussians(mu, s, ident, inten, (D, H, W), backend=backend)[0, 0]
    i, j, k = centre
    assert out[i, j, k].item() == pytest.approx(2.0)
    assert out[i + 1, j, k].item() == pytest.approx(2.0 * math.exp(-0.5 * (1 / D / 0.10) ** 2))
    assert out[i, j + 1, k].item() == pytest.approx(2.0 * math.exp(-0.5 * (1 / H / 0.05) ** 2))
    assert out[i, j, k + 1].item() == pytest.approx(2.0 * math.exp(-0.5 * (1 / W / 0.02) ** 2))
    # (w, x, y, z) = (cos 45, 0, 0, sin 45): a quarter turn about the third stored axis, which
    # swaps the first two, so the z and y extents trade places.
    quarter = torch.tensor([[[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]]], dtype=torch.float64)
    rot = render_gaussians(mu, s, quarter, inten, (D, H, W), backend=backend)[0, 0]
    assert rot[i + 1, j, k].item() == pytest.approx(2.0 * math.exp(-0.5 * (1 / D / 0.05) ** 2))
    assert rot[i, j + 1, k].item() == pytest.approx(2.0 * math.exp(-0.5 * (1 / H / 0.10) ** 2))
    # Quaternions are normalised inside: a scaled quaternion is the same rotation.
    scaled = render_gaussians(mu, s, 7.0 * quarter, inten, (D, H, W), backend=backend)[0, 0]
    torch.testing.assert_close(scaled, rot)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_cutoff_is_the_ellipsoid_not_the_box(backend):
    shape = (24, 24, 24)
    mu = torch.full((1, 1, 3), 0.5, dtype=torch.float64)
    s = torch.tensor([[[0.15, 0.03, 0.03]]], dtype=torch.float64)
    q = torch.tensor([[[0.9, 0.3, -0.2, 0.25]]], dtype=torch.float64)  # oblique: box >> ellipsoid
    one = torch.ones(1, 1, dtype=torch.float64)
    out = render_gaussians(mu, s, q, one, shape, cutoff=2.0, backend=backend)[0, 0]
    qform = _mahalanobis_grid(mu, s, q, shape)
    inside = qform <= 4.0
    assert torch.all(out[~inside] == 0)
    torch.testing.assert_close(out[inside], torch.exp(-0.5 * qform[inside]))
    # and many box voxels are outside the ellipsoid, so the test above is not vacuous
    assert (~inside).sum() > 0.5 * inside.sum()


def _mahalanobis_grid(mu, s, q, shape):
    w, x, y, z = (q[0, 0] / q[0, 0].norm()).tolist()
    rot = torch.tensor(Rotation.from_quat([x, y, z, w]).as_matrix())
    prec = torch.linalg.inv(rot @ torch.diag(s[0, 0] ** 2) @ rot.T)
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    d = grid - mu[0, 0]
    return torch.einsum("...i,ij,...j->...", d, prec, d)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_mask_batch_and_output_format(backend):
    shape = (6, 9, 11)
    params = random_gaussians(B=3, K=7, seed=5, dtype=torch.float32)
    mask = random_mask(3, shape, seed=6)
    full = render_gaussians(*params, shape, backend=backend)
    part = render_gaussians(*params, shape, mask=mask, backend=backend)
    assert full.shape == (3, 1, *shape) and full.dtype == torch.float32
    assert torch.all(part[:, 0][~mask] == 0)
    torch.testing.assert_close(part[:, 0][mask], full[:, 0][mask])
    # batch elements are independent renders
    one = render_gaussians(*[p[1:2] for p in params], shape, backend=backend)
    torch.testing.assert_close(one[0], full[1])
    # float64 parameters give float64 output (for gradcheck); half precision is computed in float32
    assert render_gaussians(*[p.double() for p in params], shape, backend=backend).dtype == torch.float64
    assert render_gaussians(*[p.half() for p in params], shape, backend=backend).dtype == torch.float32


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_autocast_does_not_lower_precision(backend):
    shape = (6, 7, 8)
    params = random_gaussians(B=1, K=5, seed=12, dtype=torch.float32)
    want = render_gaussians(*[p.double() for p in params], shape, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = render_gaussians(*params, shape, backend=backend)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_gradcheck_torch_reference():
    shape = (4, 5, 6)
    params = [p.requires_grad_() for p in random_gaussians(B=2, K=3, seed=7, outside=0.0, scale=(0.15, 0.4))]
    mask = random_mask(2, shape, seed=8)

    def fn(*p):
        return render_gaussians(*p, shape, mask=mask, backend="torch")

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reference_chunks_agree_and_backward_holds_no_k_by_v_tensor(monkeypatch):
    shape = (8, 9, 10)
    B, K = 2, 16
    params = [p.requires_grad_() for p in random_gaussians(B=B, K=K, seed=9)]
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = render_gaussians(*params, shape, backend="torch")
    grads = torch.autograd.grad(out.sum(), params)
    V = math.prod(shape)
    assert max(saved) < K * V, f"a saved tensor has {max(saved)} >= K*V = {K * V} elements"
    monkeypatch.setattr(_torch_impl, "_CHUNK_ELEMENTS", 97)  # many ragged chunks
    out2 = render_gaussians(*params, shape, backend="torch")
    grads2 = torch.autograd.grad(out2.sum(), params)
    torch.testing.assert_close(out2, out)
    for a, b in zip(grads2, grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_degenerate_finite_inputs_give_finite_outputs_and_gradients(backend):
    shape = (6, 7, 8)
    means = torch.tensor([[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [1e6, -50.0, 0.3], [0.3, 0.4, 0.5],
                           [0.51, 0.52, 0.53], [0.5, 0.2, 0.7]]])
    scales = torch.tensor([[[0.0, 0.0, 0.0], [1e-30, 0.2, 1e-20], [0.1, 0.1, 0.1], [1e30, 1e20, 1.0],
                            [-0.1, 0.05, 0.2], [1e-7, 1e-7, 1e-7]]])
    quats = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.3, 0.5, -0.2, 0.1], [1.0, 0, 0, 0], [0.2, 0.2, 0.2, 0.2],
                           [1e-30, 0, 0, 0], [0.0, 1.0, 0, 0]]])
    inten = torch.tensor([[1.0, -2.0, 3.0, 0.5, 1.0, 1e3]])
    for dtype in (torch.float32, torch.float64):
        leaves = [t.to(dtype).requires_grad_() for t in (means, scales, quats, inten)]
        out = render_gaussians(*leaves, shape, backend=backend)
        grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), leaves)
        assert torch.isfinite(out).all()
        for name, g in zip(("means", "scales", "quats", "intensities"), grads):
            assert torch.isfinite(g).all(), f"{backend} {dtype}: non-finite gradient for {name}"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_no_gaussians_and_no_batch(backend):
    shape = (3, 4, 5)
    for B, K in ((2, 0), (0, 4)):
        leaves = [torch.zeros(B, K, n, requires_grad=True) for n in (3, 3, 4)]
        leaves.append(torch.zeros(B, K, requires_grad=True))
        out = render_gaussians(*leaves, shape, mask=torch.ones(B, *shape, dtype=torch.bool), backend=backend)
        assert out.shape == (B, 1, *shape) and torch.all(out == 0)
        grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
        for g, p in zip(grads, leaves):
            assert g is None or (g.shape == p.shape and torch.all(g == 0))


def _good():
    return random_gaussians(B=2, K=3, seed=11, dtype=torch.float32)


def _poke(t, value):
    t = t.clone()
    t.view(-1)[1] = value
    return t


NAMES = ("means", "scales", "quats", "intensities")
BAD_PARAMETERS = [
    ("means", lambda t: _poke(t, float("nan"))),
    ("scales", lambda t: _poke(t, float("inf"))),
    ("quats", lambda t: _poke(t, float("-inf"))),
    ("intensities", lambda t: _poke(t, float("nan"))),
    ("means", lambda t: t[..., :2]),  # [B, K, 2]
    ("scales", lambda t: t[:, :2]),  # K differs from means
    ("quats", lambda t: t[..., :3]),  # (w, x, y) only
    ("intensities", lambda t: t[..., None]),  # [B, K, 1]
    ("means", lambda t: t.to(torch.int64)),
    ("scales", lambda t: t.numpy()),
    ("quats", lambda t: torch.empty(t.shape, device="meta")),  # another device
]


@pytest.mark.parametrize("name, change", BAD_PARAMETERS)
def test_bad_parameters_raise_value_error_naming_them(name, change):
    params = _good()
    i = NAMES.index(name)
    params[i] = change(params[i])
    with pytest.raises(ValueError, match=name):
        render_gaussians(*params, (4, 4, 4), backend="cpu")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(shape=(4, 4)), "shape"),
        (dict(shape=(4, 0, 4)), "shape"),
        (dict(shape=(4, 4.5, 4)), "shape"),
        (dict(mask=torch.ones(2, 4, 4, 5, dtype=torch.bool)), "mask"),
        (dict(mask=torch.ones(2, 4, 4, 4)), "mask"),
        (dict(mask=torch.ones(2, 4, 4, 4, dtype=torch.bool, device="meta")), "mask"),
        (dict(cutoff=0.0), "cutoff"),
        (dict(cutoff=float("nan")), "cutoff"),
        (dict(backend="cuda"), "backend"),
        (dict(backend="cupy"), "backend"),  # CPU tensors
    ],
)
def test_bad_options_raise_value_error_naming_them(kwargs, name):
    shape = kwargs.pop("shape", (4, 4, 4))
    with pytest.raises(ValueError, match=name):
        render_gaussians(*_good(), shape, **kwargs)


def test_import_needs_neither_numba_nor_cupy():
    code = "import sys, renderer_cupy; assert not {'numba', 'cupy'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
