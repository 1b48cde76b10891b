"""Builds a CUDA source for the CPU (g++ -std=c++20 with cuda_emu.h) and loads it with ctypes.

Builds are cached by the hash of everything that goes into them (source, kernel names, the
emulator's own files, compiler version and flags) under $MEDGMAE_CUDA_EMU_CACHE, by default
<tmp>/medgmae-cuda-emu, so a rerun of the tests compiles nothing.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMULATOR_FILES = ("cuda_emu.h", "launcher.h", "shared.ld")
# -O1: the emulated run is bound by thread hand-overs, not arithmetic, and -O1 compiles faster.
CXX_FLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-fvisibility=hidden", "-fno-gnu-unique",
             "-fdata-sections", "-Wall", "-Wno-unknown-pragmas", f"-Wl,-T,{HERE / 'shared.ld'}")
ERROR_BYTES = 4096
# What the emulator needs from the standard library beyond C++17.
_CXX20_PROBE = ("#include <semaphore>\n#include <atomic>\n"
                "double x; void f() { std::atomic_ref<double>(x).fetch_add(1.0); }\n")


class EmulationError(RuntimeError):
    """A launch the emulator refused or a block that failed (deadlock, bad arguments)."""


class BuildError(RuntimeError):
    """g++ rejected the source: not an emulated failure, so a planted bug that breaks the build
    cannot pass for one the harness caught."""


def cache_dir() -> Path:
    return Path(os.environ.get("MEDGMAE_CUDA_EMU_CACHE") or Path(tempfile.gettempdir()) / "medgmae-cuda-emu")


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++")


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """Why the emulator cannot be built here, or None when it can."""
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler (g++, or $CXX) on PATH"
    probe = subprocess.run([cxx, "-std=c++20", "-fsyntax-only", "-x", "c++", "-"], input=_CXX20_PROBE,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{cxx} has no C++20 <semaphore> / std::atomic_ref<double>: {probe.stderr.strip()[:300]}"
    return None


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout


def _translation_unit(source: Path, kernels, constants) -> str:
    table = ",\n".join(f'    cuda_emu::kernel("{name}", &{name})' for name in kernels)
    values = "".join(f'{{"{name}", {name}}}, ' for name in constants)
    return (f'#include "{HERE / "cuda_emu.h"}"\n#include "{source}"\n#include "{HERE / "launcher.h"}"\n'
            f"const cuda_emu::Kernel cuda_emu::KERNELS[] = {{\n{table}\n}};\n"
            f"const std::size_t cuda_emu::KERNEL_COUNT = {len(kernels)};\n"
            f"const cuda_emu::Constant cuda_emu::CONSTANTS[] = {{{values}{{nullptr, 0}}}};\n"
            f"const std::size_t cuda_emu::CONSTANT_COUNT = {len(constants)};\n")


def build(code: str, kernels, constants=()) -> Path:
    """The shared library of CUDA source ``code`` exporting ``kernels`` (names as given to NVRTC,
    e.g. ``render_forward<float>``) and the integer macros ``constants``; built once per content."""
    cxx = compiler()
    digest = hashlib.sha256()
    for part in (code, "\0".join(kernels), "\0".join(constants), _compiler_version(cxx), " ".join(CXX_FLAGS),
                 *((HERE / f).read_text() for f in EMULATOR_FILES)):
        digest.update(part.encode() + b"\0\1")
    key = digest.hexdigest()[:24]
    folder = cache_dir()
    library = folder / f"{key}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # Per-process file names, the library renamed into place: test runs side by side never read
    # each other's half-written files.
    stem = folder / f"{key}.{os.getpid()}"
    source, unit, partial = (stem.with_name(f"{stem.name}{ext}") for ext in (".cu", ".cpp", ".so"))
    source.write_text(code)
    unit.write_text(_translation_unit(source, kernels, constants))
    done = subprocess.run([cxx, *CXX_FLAGS, str(unit), "-o", str(partial)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"g++ could not build {source} for the CPU:\n{done.stderr[-4000:]}")
    os.replace(partial, library)
    source.unlink()
    unit.unlink()
    return library


class Module:
    """A built library: launch its kernels and read its constants."""

    def __init__(self, library: Path):
        self.path = library
        self._lib = ctypes.CDLL(str(library))
        self._lib.cuda_emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int,
                                              ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
                                              ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        self._lib.cuda_emu_constant.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_long)]
        self._lib.cuda_emu_shared_bytes.restype = ctypes.c_long

    def launch(self, name: str, grid: int, threads: int, params, descending: bool = False) -> None:
        """Runs ``name`` on ``grid`` blocks of ``threads``; ``params`` are the arguments' bytes, as
        cuLaunchKernel gets them. Raises EmulationError on any failure."""
        buffers = [ctypes.create_string_buffer(bytes(p), len(p)) for p in params]
        pointers = (ctypes.c_void_p * max(1, len(buffers)))(*[ctypes.addressof(b) for b in buffers])
        sizes = (ctypes.c_size_t * max(1, len(buffers)))(*[len(p) for p in params])
        error = ctypes.create_string_buffer(ERROR_BYTES)
        failed = self._lib.cuda_emu_launch(name.encode(), grid, threads, len(buffers), pointers, sizes,
                                           int(descending), error, ERROR_BYTES)
        if failed:
            raise EmulationError(f"{name}: {error.value.decode()}")

    def constant(self, name: str) -> int:
        value = ctypes.c_long()
        if not self._lib.cuda_emu_constant(name.encode(), ctypes.byref(value)):
            raise KeyError(f"{name} is not among the constants this module was built with")
        return value.value

    @property
    def shared_bytes(self) -> int:
        return self._lib.cuda_emu_shared_bytes()


@functools.lru_cache(maxsize=None)
def load(library: Path) -> Module:
    """One Module per library file: ctypes cannot unload a library, so load each only once."""
    return Module(library)
