"""Resource limits of kernels.cu as tests: ptxas -v on the PTX for sm_80 and sm_90 (no GPU needed).

Asserted: no register spills in the float kernels, and at least MIN_RESIDENT_BLOCKS blocks of
BLOCK_THREADS per SM on sm_80 for every kernel, from its registers and static shared memory (a
performance guard: a block is one tile, and one resident block per SM would leave the SM idle at
every barrier). The figures are printed (pytest -s, or in the report of a failure).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from renderer_cupy.backend_cupy import BLOCK_THREADS, KERNEL_NAMES, NVRTC_OPTIONS, SOURCE_PATH

ARCHS = ("sm_80", "sm_90")
MIN_RESIDENT_BLOCKS = 2


@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits of one architecture (CUDA C++ Programming Guide, compute capabilities table)."""

    registers: int = 65536
    threads: int = 2048
    blocks: int = 32
    shared_bytes: int = 164 * 1024  # sm_80: the largest carve-out of the 192 KB L1/shared
    reserved_shared_per_block: int = 1024  # the runtime reserves 1 KB of shared memory per block
    register_unit: int = 256  # registers are allocated per warp in units of 256


SM80 = SmLimits()


@dataclass(frozen=True)
class KernelResources:
    kernel: str  # e.g. render_forward<float>
    registers: int
    shared_bytes: int
    spill_stores: int  # bytes
    spill_loads: int


def resident_blocks(r: KernelResources, limits: SmLimits = SM80, threads: int = BLOCK_THREADS) -> int:
    """Blocks of ``threads`` one SM holds at once, limited by registers, shared memory and threads."""
    warps = -(-threads // 32)
    per_warp = -(-r.registers * 32 // limits.register_unit) * limits.register_unit
    by_registers = limits.registers // (per_warp * warps)
    by_shared = limits.shared_bytes // (r.shared_bytes + limits.reserved_shared_per_block)
    return min(by_registers, by_shared, limits.threads // threads, limits.blocks)


def _ptx(arch: str) -> str:
    """PTX of the kernels as the backend compiles them (NVRTC with its options), or from nvcc."""
    compute = arch.replace("sm_", "compute_")
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            pytest.skip("neither CuPy's NVRTC nor nvcc is here to make the PTX")
        done = subprocess.run([nvcc, "-ptx", f"-arch={compute}", *NVRTC_OPTIONS, "-x", "cu", str(SOURCE_PATH),
                               "-o", "-"], capture_output=True, text=True, check=True)
        return done.stdout
    prog = nvrtc.createProgram(SOURCE_PATH.read_text(), SOURCE_PATH.name, [], [])
    try:
        for name in KERNEL_NAMES.values():
            nvrtc.addNameExpression(prog, name)
        nvrtc.compileProgram(prog, [f"--gpu-architecture={compute}", *NVRTC_OPTIONS])
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


# _Z14render_forwardIfEv... -> render_forward<float>
_MANGLED = re.compile(r"_Z\d+(render_\w+?)I([fd])E")
_CTYPE = {"f": "float", "d": "double"}


def parse_ptxas(log: str) -> dict[str, KernelResources]:
    """Per-kernel figures from ``ptxas -v``: each entry's block runs from 'Compiling entry
    function' to its 'Used N registers' line."""
    found = {}
    for block in log.split("Compiling entry function")[1:]:
        name = _MANGLED.search(block)
        registers = re.search(r"Used (\d+) registers", block)
        shared = re.search(r"(\d+) bytes smem", block)  # absent when the kernel declares none
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        assert name and registers and spills, f"unexpected ptxas output:\n{block}"
        kernel = f"{name.group(1)}<{_CTYPE[name.group(2)]}>"
        found[kernel] = KernelResources(kernel, int(registers.group(1)), int(shared.group(1)) if shared else 0,
                                        int(spills.group(1)), int(spills.group(2)))
    return found


@pytest.fixture(scope="module")
def resources(tmp_path_factory) -> dict[str, dict[str, KernelResources]]:
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas is not on PATH (it comes with the CUDA toolkit or the nvidia-cuda-nvcc wheel)")
    figures = {}
    for arch in ARCHS:
        path = tmp_path_factory.mktemp(arch) / "kernels.ptx"
        path.write_text(_ptx(arch))
        done = subprocess.run([ptxas, "-v", f"-arch={arch}", str(path), "-o", str(path.with_suffix(".cubin"))],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"ptxas failed for {arch}:\n{done.stderr}"
        figures[arch] = parse_ptxas(done.stderr + done.stdout)
    print("\nkernel resources (ptxas -v):")
    for arch, kernels in figures.items():
        for r in kernels.values():
            print(f"  {arch} {r.kernel:<24} {r.registers:3d} registers {r.shared_bytes:6d} B static smem "
                  f"{r.spill_stores:3d} B spill stores  {resident_blocks(r)} blocks/SM by sm_80 limits")
    return figures


def test_ptxas_reports_every_kernel(resources):
    for arch in ARCHS:
        assert set(resources[arch]) == set(KERNEL_NAMES.values()), arch


@pytest.mark.parametrize("arch", ARCHS)
def test_float_kernels_do_not_spill(resources, arch):
    for r in resources[arch].values():
        if r.kernel.endswith("<float>"):
            assert r.spill_stores == r.spill_loads == 0, f"{arch} {r.kernel} spills {r.spill_stores} bytes"


def test_two_blocks_resident_per_sm_on_sm80(resources):
    for r in resources["sm_80"].values():
        blocks = resident_blocks(r)
        assert blocks >= MIN_RESIDENT_BLOCKS, (
            f"{r.kernel}: {r.registers} registers and {r.shared_bytes} B shared memory allow {blocks} "
            f"block(s) of {BLOCK_THREADS} threads per sm_80 SM, fewer than {MIN_RESIDENT_BLOCKS}")


@pytest.mark.parametrize("registers, shared, blocks", [
    (66, 42016, 3),   # today's worst figures (sm_90, render_backward<double>)
    (129, 0, 1),      # past 128 registers a block takes over half the register file
    (64, 80000, 2),   # shared memory binds: 164 KB / (80000 + 1024) B
    (32, 0, 8),       # thread-bound: 2048 / 256
])
def test_resident_block_arithmetic(registers, shared, blocks):
    assert resident_blocks(KernelResources("k", registers, shared, 0, 0)) == blocks
