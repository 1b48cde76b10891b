"""The ``"cupy"`` backend: NVRTC compilation of kernels.cu (runs without a GPU), and the CUDA
kernels against the dense torch reference (marked ``gpu``: reported as skipped without one)."""
from __future__ import annotations

import ctypes
import glob
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from renderer_cupy import render_gaussians
from renderer_cupy.backend_cupy import KERNEL_NAMES, NVRTC_OPTIONS, SOURCE_PATH
from renderer_cupy.testing import assert_grads_close, random_gaussians, random_mask, value_and_grads


def _nvrtc_library_candidates():
    """libnvrtc locations: the nvidia-* wheels torch / cupy bring, then a CUDA toolkit."""
    roots = [Path(p) for p in sys.path if p and Path(p, "nvidia").is_dir()]
    found = []
    for root in roots:
        found += glob.glob(str(root / "nvidia" / "*" / "lib" / "libnvrtc.so*"))
        found += glob.glob(str(root / "nvidia" / "cuda_nvrtc" / "lib" / "libnvrtc.so*"))
    for home in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            found += glob.glob(os.path.join(home, "lib64", "libnvrtc.so*"))
    return [f for f in found if "builtins" not in f]


def _nvrtc():
    """cupy.cuda.nvrtc with a working libnvrtc; skips only when CuPy itself is missing."""
    pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda13x)")
    from cupy.cuda import nvrtc

    try:
        nvrtc.getVersion()
        return nvrtc
    except Exception as first:  # CuPy could not find libnvrtc by itself: preload one it can reuse
        for lib in _nvrtc_library_candidates():
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                nvrtc.getVersion()
                return nvrtc
            except Exception:
                continue
        raise AssertionError(f"CuPy is installed but no usable libnvrtc was found ({first})") from first


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_kernels_compile_with_nvrtc(arch):
    nvrtc = _nvrtc()
    source = SOURCE_PATH.read_text()
    assert "#include" not in source  # NVRTC must not depend on toolkit headers being installed
    prog = nvrtc.createProgram(source, SOURCE_PATH.name, [], [])
    try:
        for name in KERNEL_NAMES.values():
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *NVRTC_OPTIONS])
        except Exception as err:
            raise AssertionError(f"NVRTC failed for {arch}:\n{nvrtc.getProgramLog(prog)}") from err
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        assert f".target sm_{arch.split('_')[1]}" in ptx
        entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
        for name in KERNEL_NAMES.values():
            assert nvrtc.getLoweredName(prog, name) in entries, f"{name} missing from the PTX"
    finally:
        nvrtc.destroyProgram(prog)


# ---------------------------------------------------------------------------------------------
# On a GPU


def _cuda(params):
    return [p.cuda() for p in params]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(9, 14, 11), (16, 7, 33), (40, 36, 28)])
@pytest.mark.parametrize("masked", [False, True])
def test_cupy_matches_reference_float64(shape, masked):
    params = _cuda(random_gaussians(B=3, K=300 if shape[0] == 40 else 24, seed=sum(shape) + masked))
    mask = random_mask(3, shape, seed=4, device="cuda") if masked else None
    want, cot, want_g = value_and_grads(params, shape, backend="torch", mask=mask)
    got, _, got_g = value_and_grads(params, shape, backend="cupy", mask=mask, cotangent=cot)
    assert got.is_cuda and got.shape == (3, 1, *shape)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert_grads_close(got_g, want_g, rtol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [False, True])
def test_cupy_float32_matches_float64_reference(masked):
    shape = (24, 20, 28)
    params = _cuda(random_gaussians(B=2, K=64, seed=21, dtype=torch.float32))
    mask = random_mask(2, shape, seed=22, device="cuda") if masked else None
    want, cot, want_g = value_and_grads([p.double() for p in params], shape, backend="torch", mask=mask)
    got, _, got_g = value_and_grads(params, shape, backend="cupy", mask=mask, cotangent=cot)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    assert_grads_close(got_g, want_g, rtol=1e-3)


@pytest.mark.gpu
def test_cupy_matches_cpu_backend_float32():
    shape = (32, 32, 32)
    params = random_gaussians(B=2, K=128, seed=23, dtype=torch.float32)
    mask = random_mask(2, shape, seed=24)
    want, cot, want_g = value_and_grads(params, shape, backend="cpu", mask=mask)
    got, _, got_g = value_and_grads(_cuda(params), shape, backend="cupy", mask=mask.cuda(),
                                    cotangent=cot.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
    assert_grads_close(got_g, want_g, rtol=1e-3)


@pytest.mark.gpu
def test_cupy_gradcheck():
    shape = (4, 5, 6)
    params = random_gaussians(B=2, K=3, seed=51, outside=0.0, scale=(0.15, 0.4))
    params = [p.requires_grad_() for p in _cuda(params)]
    mask = random_mask(2, shape, seed=52, device="cuda")
    # nondet_tol: the gradient sums use atomics, so their order (last bits) varies between runs
    assert torch.autograd.gradcheck(lambda *p: render_gaussians(*p, shape, mask=mask, backend="cupy"), params,
                                    eps=1e-6, atol=1e-6, rtol=1e-5, nondet_tol=1e-10)


@pytest.mark.gpu
def test_cupy_runs_on_torch_current_stream_and_auto_picks_it():
    shape = (20, 24, 16)
    params = _cuda(random_gaussians(B=2, K=40, seed=81, dtype=torch.float32))
    want = render_gaussians(*params, shape, backend="torch")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = render_gaussians(*params, shape)  # auto -> cupy for CUDA tensors
        got = got * 1.0  # consumed on the same stream without a sync in between
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cupy_degenerate_and_empty_inputs():
    shape = (6, 7, 8)
    means = torch.tensor([[[0.5, 0.5, 0.5], [1e6, -50.0, 0.3], [0.3, 0.4, 0.5]]])
    scales = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [1e30, 1e-30, 1.0]]])
    quats = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 0, 0, 0], [0.2, 0.2, 0.2, 0.2]]])
    inten = torch.tensor([[1.0, 3.0, 0.5]])
    leaves = [t.cuda().requires_grad_() for t in (means, scales, quats, inten)]
    out = render_gaussians(*leaves, shape, backend="cupy")
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), leaves)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    for B, K in ((2, 0), (0, 3)):
        empty = [torch.zeros(B, K, n, device="cuda", requires_grad=True) for n in (3, 3, 4)]
        empty.append(torch.zeros(B, K, device="cuda", requires_grad=True))
        out = render_gaussians(*empty, shape, backend="cupy")
        assert out.shape == (B, 1, *shape) and torch.all(out == 0)
        torch.autograd.grad(out.sum(), empty, allow_unused=True)


@pytest.mark.gpu
def test_cupy_rejects_mixed_devices():
    params = random_gaussians(B=1, K=2, seed=91, dtype=torch.float32)
    params[0] = params[0].cuda()
    with pytest.raises(ValueError, match="scales"):
        render_gaussians(*params, (4, 4, 4), backend="cupy")
