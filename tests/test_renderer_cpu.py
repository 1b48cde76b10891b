"""The numba ``"cpu"`` backend against the dense torch reference: forward, gradients, gradcheck."""
from __future__ import annotations

import multiprocessing
import sys

import numpy as np
import pytest
import torch

from renderer_cupy import render_gaussians
from renderer_cupy._torch_impl import moments_dense
from renderer_cupy.backend_cpu import CpuRender, _load_kernels
from renderer_cupy.geometry import gaussian_conics
from renderer_cupy.testing import assert_grads_close, random_gaussians, random_mask, value_and_grads

GRIDS = [(9, 14, 11), (16, 7, 12)]


@pytest.mark.parametrize("shape", GRIDS)
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_matches_reference_float64(shape, masked):
    params = random_gaussians(B=2, K=24, seed=sum(shape) + masked)
    mask = None
    if masked:
        mask = random_mask(2, shape, seed=4)
        mask[:, :, ::3] = False  # whole rows off, which the kernels skip
    want, cot, want_g = value_and_grads(params, shape, backend="torch", mask=mask)
    got, _, got_g = value_and_grads(params, shape, backend="cpu", mask=mask, cotangent=cot)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_grads_close(got_g, want_g, rtol=1e-9)
    assert torch.count_nonzero(want) > 0.3 * want.numel()  # the Gaussians do cover the grid


@pytest.mark.parametrize("masked", [False, True])
def test_cpu_float32_matches_float64_reference(masked):
    shape = (12, 10, 14)
    params = random_gaussians(B=2, K=32, seed=21, dtype=torch.float32)
    mask = random_mask(2, shape, seed=22) if masked else None
    want, cot, want_g = value_and_grads([p.double() for p in params], shape, backend="torch", mask=mask)
    got, _, got_g = value_and_grads(params, shape, backend="cpu", mask=mask, cotangent=cot)
    assert got.dtype == torch.float32 and all(g.dtype == torch.float32 for g in got_g)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    assert_grads_close(got_g, want_g, rtol=1e-3)


def test_cpu_mixed_sizes_one_gaussian_covers_everything():
    shape = (10, 12, 9)
    means, scales, quats, inten = random_gaussians(B=1, K=6, seed=31)
    scales[0, 0] = torch.tensor([2.0, 1.5, 3.0])  # wider than the volume
    scales[0, 1] = torch.tensor([1e-3, 1e-3, 1e-3])  # far below a voxel
    means[0, 1] = torch.tensor([(4 + 0.5) / 10, (6 + 0.5) / 12, (3 + 0.5) / 9])  # on a voxel centre
    scales[0, 2] = torch.tensor([0.4, 0.005, 0.2])  # a thin sheet
    params = [means, scales, quats, inten]
    want, cot, want_g = value_and_grads(params, shape, backend="torch")
    got, _, got_g = value_and_grads(params, shape, backend="cpu", cotangent=cot)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_grads_close(got_g, want_g, rtol=1e-9)


def test_cpu_backward_kernel_matches_torch_twin():
    shape = (8, 11, 9)
    B, K = 2, 10
    means, scales, quats, _ = random_gaussians(B=B, K=K, seed=41)
    conics, radii = gaussian_conics(scales, quats, 2.5)
    mask = random_mask(B, shape, seed=42)
    grad_out = torch.randn(B, *shape, dtype=torch.float64)
    moments = np.zeros((B, K, 10))
    mask_u8, rows_u8 = mask.numpy().view(np.uint8), mask.any(-1).numpy().view(np.uint8)
    _load_kernels().render_backward(means.numpy(), conics.detach().numpy(), radii.numpy(), mask_u8, rows_u8, True,
                                    2.5**2, grad_out.numpy(), moments, 0, B * K)
    twin = moments_dense(means, conics.detach(), grad_out, shape, mask, 2.5)
    np.testing.assert_allclose(moments, twin.numpy(), rtol=1e-9, atol=1e-12)


def test_cpu_gradcheck():
    shape = (4, 5, 6)
    params = [p.requires_grad_() for p in random_gaussians(B=2, K=3, seed=51, outside=0.0, scale=(0.15, 0.4))]
    mask = random_mask(2, shape, seed=52)

    def fn(*p):
        return render_gaussians(*p, shape, mask=mask, backend="cpu")

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_cpu_result_does_not_depend_on_thread_count():
    shape = (11, 9, 10)
    params = random_gaussians(B=3, K=20, seed=61, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, cot, g_one = value_and_grads(params, shape, backend="cpu")
        torch.set_num_threads(3)
        three, _, g_three = value_and_grads(params, shape, backend="cpu", cotangent=cot)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)
    for a, b in zip(g_one, g_three):
        assert torch.equal(a, b)


def test_auto_picks_cpu_for_cpu_tensors(monkeypatch):
    calls = []
    original = CpuRender.apply
    monkeypatch.setattr(CpuRender, "apply", lambda *a: calls.append(1) or original(*a))
    params = random_gaussians(B=1, K=3, seed=71, dtype=torch.float32)
    render_gaussians(*params, (4, 4, 4))
    assert calls == [1]


def _render_in_child():
    params = random_gaussians(B=2, K=8, seed=81, dtype=torch.float32)
    out = render_gaussians(*params, (8, 8, 8), backend="cpu")
    sys.exit(0 if torch.isfinite(out).all() else 1)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_cpu_backend_works_in_a_forked_child():
    # the parent's worker threads do not survive fork(); a DataLoader-style child must not hang
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, before))  # so that the parent does start its worker pool
        render_gaussians(*random_gaussians(B=2, K=8, seed=80, dtype=torch.float32), (8, 8, 8), backend="cpu")
        child = multiprocessing.get_context("fork").Process(target=_render_in_child)
        child.start()
        child.join(timeout=120)
    finally:
        torch.set_num_threads(before)
    if child.is_alive():
        child.kill()
        pytest.fail("rendering in a forked child hung")
    assert child.exitcode == 0
