"""kernels.cu executed on the CPU: the unchanged CUDA source built with g++ and cuda_emu.h (one OS
thread per CUDA thread, deterministic hand-overs at sync points), launched by backend_cupy's own
code through a stand-in for CuPy, and compared with the dense torch reference. Planted bugs in
copies of the kernel must fail the same comparison."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cuda_emu import build, fake_cupy
from renderer_cupy import backend_cupy, render_gaussians
from renderer_cupy.geometry import gaussian_conics
from renderer_cupy.testing import assert_grads_close, random_gaussians, random_mask, value_and_grads

pytestmark = pytest.mark.skipif(build.unavailable_reason() is not None,
                                reason=f"CUDA emulation needs a C++20 compiler: {build.unavailable_reason()}")

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}  # relative to the reference's largest entry
CUTOFF = 3.0


@dataclass
class Case:
    shape: tuple
    params: list  # means, scales, quats, intensities (float64)
    mask: torch.Tensor | None


def edges_case() -> Case:
    """Every tile overhangs the volume, two batch elements, empty mask tiles, a Gaussian outside."""
    shape = (5, 9, 10)
    params = random_gaussians(B=2, K=6, seed=11, outside=0.3, scale=(0.06, 0.2))
    params[0][:, 0] = torch.tensor([1.7, 0.5, -0.6])  # wholly outside the volume
    mask = random_mask(2, shape, seed=12, keep=0.6)
    mask[0, :4, :8, :8] = False  # batch element 0's first tile
    mask[1, 4:] = False  # batch element 1's last layer of tiles
    return Case(shape, params, mask)


def rounds_case() -> Case:
    """K = 300: two culling rounds with hits in both, 38 Gaussians per tile: two reduction batches."""
    shape, K = (4, 8, 10), 300
    params = random_gaussians(B=1, K=K, seed=13, outside=0.0, scale=(0.15, 0.4))
    far = torch.ones(K, dtype=torch.bool)
    far[::8] = False
    params[0][0, far] += 5.0  # culled everywhere: keeps the emulated run short
    mask = torch.ones(1, *shape, dtype=torch.bool)
    mask[:, :2] = False  # whole warps without work skip their shuffles
    return Case(shape, params, mask)


def control_case() -> Case:
    """Many small Gaussians over 27 tiles: the forward pass the planted bugs must fail on."""
    shape = (9, 17, 19)
    params = random_gaussians(B=2, K=120, seed=15, outside=0.1, scale=(0.03, 0.1))
    return Case(shape, params, random_mask(2, shape, seed=16, keep=0.8))


def tile_hits(case: Case) -> torch.Tensor:
    """[B, K, tiles]: whether Gaussian k's culling box meets the tile (as the kernel bins them)."""
    means, scales, quats, _ = case.params
    _, radii = gaussian_conics(scales, quats, CUTOFF)
    per_axis = []
    for a, (size, tile) in enumerate(zip(case.shape, backend_cupy.TILE)):
        first = torch.arange(0, size, tile, dtype=torch.float64)
        lo, hi = first / size, torch.clamp(first + tile, max=size) / size
        m, r = means[..., a, None], radii[..., a, None]
        per_axis.append((m - r <= hi) & (m + r >= lo))
    hz, hy, hx = per_axis
    return (hz[..., :, None, None] & hy[..., None, :, None] & hx[..., None, None, :]).flatten(2)


def tiles_with_voxels(case: Case) -> torch.Tensor:
    """[B, tiles]: whether the mask leaves any voxel of the tile to render."""
    (D, H, W), (tz, ty, tx) = case.shape, backend_cupy.TILE
    return torch.stack([case.mask[:, z:z + tz, y:y + ty, x:x + tx].flatten(1).any(1)
                        for z in range(0, D, tz) for y in range(0, H, ty) for x in range(0, W, tx)], dim=1)


def test_cases_cover_what_they_claim():
    edges, rounds = edges_case(), rounds_case()
    assert all(s % t for s, t in zip(edges.shape, backend_cupy.TILE)), "every axis's last tile overhangs"
    hits = tile_hits(edges)
    assert (~hits.any(-1)).any(), "a Gaussian lies wholly outside the volume"
    occupied = tiles_with_voxels(edges)
    assert not occupied.all() and occupied.any(), "some mask tiles empty, some not"
    hits = tile_hits(rounds)
    K = rounds.params[3].shape[1]
    assert K > 256 and hits[:, 256:].any(), "a second culling round with hits"
    assert hits.sum(1).min() > 32, "more than one reduction batch in every tile"


@pytest.fixture
def emulated(monkeypatch):
    return fake_cupy.install(monkeypatch)


def _compare(case: Case, dtype, emulated):
    params = [p.to(dtype) for p in case.params]
    want, cot, want_g = value_and_grads([p.double() for p in params], case.shape, backend="torch",
                                        mask=case.mask, cutoff=CUTOFF)
    got, _, got_g = value_and_grads(params, case.shape, backend="cupy", mask=case.mask, cutoff=CUTOFF,
                                    cotangent=cot)
    assert got.dtype == dtype and got.shape == want.shape
    assert [launch.name.partition("<")[0] for launch in emulated.launches] == ["render_forward", "render_backward"]
    assert_grads_close([got], [want], TOLERANCE[dtype], names=("forward",))
    assert_grads_close(got_g, want_g, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("make_case", [edges_case, rounds_case], ids=["edges", "rounds"])
def test_emulated_kernels_match_reference(make_case, dtype, emulated):
    _compare(make_case(), dtype, emulated)


def test_emulated_kernels_in_reverse_thread_order(monkeypatch):
    """The other deterministic interleaving: the last thread of the block runs first."""
    _compare(rounds_case(), torch.float64, fake_cupy.install(monkeypatch, descending=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_emulated_kernels_without_gaussians(dtype, emulated):
    leaves = [torch.zeros(2, 0, n, dtype=dtype, requires_grad=True) for n in (3, 3, 4)]
    leaves.append(torch.zeros(2, 0, dtype=dtype, requires_grad=True))
    out = render_gaussians(*leaves, (5, 9, 10), backend="cupy")
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), leaves)
    assert out.shape == (2, 1, 5, 9, 10) and torch.all(out == 0)
    assert [g.shape for g in grads] == [t.shape for t in leaves]
    assert len(emulated.launches) == 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_backend_launch_geometry_and_arguments(dtype, emulated):
    case = edges_case()
    params = [p.to(dtype).requires_grad_() for p in case.params]
    out = render_gaussians(*params, case.shape, mask=case.mask, backend="cupy")
    out.sum().backward()
    module = emulated.compiled[0].module
    tile = [module.constant(n) for n in ("TILE_Z", "TILE_Y", "TILE_X")]
    assert tuple(backend_cupy.TILE) == tuple(tile)
    assert backend_cupy.BLOCK_THREADS == module.constant("BLOCK_THREADS")
    assert backend_cupy.NUM_MOMENTS == module.constant("NUM_MOMENTS")
    tiles = int(np.prod([-(-s // t) for s, t in zip(case.shape, tile)]))
    scalar = np.float32 if dtype == torch.float32 else np.float64
    for launch, pointers in zip(emulated.launches, (6, 7)):
        assert launch.grid == (tiles * 2, 1, 1) and launch.block == (module.constant("BLOCK_THREADS"), 1, 1)
        assert launch.arg_types == (np.dtype(np.uint64),) * pointers + (np.dtype(np.int32),) * 4 + (np.dtype(scalar),)
        assert launch.stream[0] == "external", "launched on torch's current stream"


# ---------------------------------------------------------------------------------------------
# Positive controls: copies of kernels.cu with one planted bug each must fail.

PLANTED_BUGS = {
    "compaction offset off by one": ("const int slot = offset + __popc(", "const int slot = offset + 1 + __popc("),
    "missing bounds check": ("const bool active = v.valid && (mask", "const bool active = (mask"),
    "tile box one voxel short": ("min(first[a] + extent[a], size[a]) - 1;", "min(first[a] + extent[a], size[a]) - 2;"),
    "barrier after compaction removed": ("        s.index[slot] = k;\n    }\n    __syncthreads();\n",
                                         "        s.index[slot] = k;\n    }\n"),
}


def planted(bug: str) -> str:
    old, new = PLANTED_BUGS[bug]
    source = backend_cupy.SOURCE_PATH.read_text()
    assert source.count(old) == 1, f"the planted bug '{bug}' no longer matches kernels.cu"
    return source.replace(old, new)


def forward_failure(monkeypatch, tmp_path, source: str, descending: bool) -> str | None:
    """How the emulated forward of ``source`` fails against the reference, or None if it passes."""
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    fake_cupy.install(monkeypatch, descending=descending)
    monkeypatch.setattr(backend_cupy, "SOURCE_PATH", path)
    case = control_case()
    want = render_gaussians(*case.params, case.shape, mask=case.mask, backend="torch")
    try:
        got = render_gaussians(*case.params, case.shape, mask=case.mask, backend="cupy")
    except build.EmulationError as err:
        return str(err)
    error = ((got - want).abs().max() / want.abs().max()).item()
    return None if error <= TOLERANCE[torch.float64] else f"relative error {error:.3g}"


ORDERS = pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])


@ORDERS
def test_unchanged_kernel_passes_the_control_case(monkeypatch, tmp_path, descending):
    assert forward_failure(monkeypatch, tmp_path, backend_cupy.SOURCE_PATH.read_text(), descending) is None


@ORDERS
@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_planted_bug_fails(monkeypatch, tmp_path, bug, descending):
    failure = forward_failure(monkeypatch, tmp_path, planted(bug), descending)
    assert failure is not None, f"the harness missed the planted bug: {bug}"


# ---------------------------------------------------------------------------------------------
# The emulator itself: what it must detect instead of hanging, and the intrinsics' semantics.

PROBES = r"""
__global__ void early_return(float* out) {  // thread 3 returns before the barrier the others wait at
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}
__global__ void partial_warp(unsigned* out) {  // half of warp 1 calls a full-mask ballot
    if (threadIdx.x < 48) out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
}
__global__ void divergent_barriers(float* out) {
    if (threadIdx.x % 2)
        __syncthreads();
    else
        __syncthreads();
}
__global__ void stale_shared(float* out) {  // block 1 reads what only block 0 wrote
    __shared__ float s[256];
    if (blockIdx.x == 0) s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[blockIdx.x * 256 + threadIdx.x] = s[threadIdx.x];
}
template <typename T>  // the same in a template, as kernels.cu's kernels are (its statics are COMDAT)
__global__ void stale_shared_t(T* out) {
    __shared__ T s[256];
    if (blockIdx.x == 0) s[threadIdx.x] = T(1);
    __syncthreads();
    out[blockIdx.x * 256 + threadIdx.x] = s[threadIdx.x];
}
template __global__ void stale_shared_t<float>(float*);
__global__ void intrinsics(int* out, double* sum) {
    const int t = threadIdx.x, lane = t & 31;
    out[t * 4 + 0] = __shfl_down_sync(0xffffffffu, t, 5);
    out[t * 4 + 1] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    out[t * 4 + 2] = __any_sync(0xffffffffu, t == 40);
    out[t * 4 + 3] = __syncthreads_or(t == 200) + __popc(0xf0u);
    atomicAdd(sum, 0.5);
}
"""
PROBE_KERNELS = ("early_return", "partial_warp", "divergent_barriers", "stale_shared", "stale_shared_t<float>",
                 "intrinsics")


@pytest.fixture(scope="module")
def probes():
    return build.load(build.build(PROBES, PROBE_KERNELS))


def _launch(module, name, grid, *arrays, descending=False):
    params = [np.uint64(a.ctypes.data).tobytes() for a in arrays]
    module.launch(name, grid, 256, params, descending=descending)


@pytest.mark.parametrize("name, message", [
    ("early_return", r"partial-block barrier: __syncthreads at line \d+ of block 0 reached by 255 of 256 "
                     r"threads.*threads 3 had returned"),
    ("partial_warp", r"partial-warp intrinsic: __ballot_sync at line \d+ of block 0 reached by 16 of 32 lanes "
                     r"of warp 1"),
    ("divergent_barriers", r"divergent sync: __syncthreads at line \d+"),
])
@ORDERS
def test_emulator_reports_instead_of_hanging(probes, name, message, descending):
    with pytest.raises(build.EmulationError, match=message):
        _launch(probes, name, 1, np.zeros(256, np.float32), descending=descending)


def test_poisoned_range_is_exactly_the_shared_variables(probes):
    assert probes.shared_bytes == 2 * 256 * 4  # stale_shared's and stale_shared_t<float>'s s, nothing else


def test_poisoned_range_holds_every_shared_variable_of_the_kernels():
    """kernels.cu's own __shared__ memory is poisoned before each block, all of it: the range is the
    static shared memory of its four kernels, as ptxas counts it (11,296 + 21,536 + 21,536 + 42,016 B)."""
    source = backend_cupy.SOURCE_PATH.read_text()
    n = {name: int(value) for name, value in re.findall(r"^#define (\w+) (\d+)", source, re.M)}
    expected = 0
    for scalar in (4, 8):  # float, double
        gaussians = n["CHUNK"] * (3 + 6 + 1) * scalar + n["CHUNK"] * 4 + n["NUM_WARPS"] * 4  # SharedGaussians
        partial = n["NUM_WARPS"] * n["RED_BATCH"] * n["NUM_MOMENTS"] * scalar
        expected += gaussians + (gaussians + partial)  # render_forward's s; render_backward's s and partial
    names = tuple(backend_cupy.KERNEL_NAMES.values())
    module = build.load(build.build(source, names, fake_cupy.RawModule.CONSTANTS))  # the stand-in's build
    assert module.shared_bytes == expected


@pytest.mark.parametrize("kernel", ["stale_shared", "stale_shared_t<float>"])
def test_emulator_poisons_shared_memory_before_every_block(probes, kernel):
    out = np.zeros(512, np.float32)
    _launch(probes, kernel, 2, out)
    assert (out[:256] == 1).all() and np.isnan(out[256:]).all()


@ORDERS
def test_emulator_intrinsics(probes, descending):
    out, total = np.zeros((256, 4), np.int32), np.zeros(1, np.float64)
    _launch(probes, "intrinsics", 3, out, total, descending=descending)
    t = np.arange(256)
    lane = t % 32
    assert (out[:, 0] == np.where(lane + 5 < 32, t + 5, t)).all(), "lanes past the warp keep their own value"
    assert (out[:, 1].view(np.uint32) == sum(1 << i for i in range(0, 32, 3))).all()
    assert (out[:, 2] == (t // 32 == 1)).all()
    assert (out[:, 3] == 1 + 4).all()
    assert total[0] == 3 * 256 * 0.5


def test_emulator_checks_argument_count_and_sizes(probes):
    out = np.zeros(256, np.float32)
    with pytest.raises(build.EmulationError, match="takes 1 arguments, got 2"):
        probes.launch("early_return", 1, 256, [np.uint64(out.ctypes.data).tobytes()] * 2)
    with pytest.raises(build.EmulationError, match="argument 0 is 8 bytes, got 4"):
        probes.launch("early_return", 1, 256, [np.int32(0).tobytes()])
    with pytest.raises(build.EmulationError, match="no kernel named missing"):
        probes.launch("missing", 1, 256, [])
