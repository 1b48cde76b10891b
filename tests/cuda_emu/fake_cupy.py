"""A stand-in for the few CuPy calls ``renderer_cupy.backend_cupy`` makes (RawModule, get_function,
Device, Stream.from_external / ExternalStream), whose kernels run on the CPU emulator.

Installed as ``sys.modules["cupy"]`` (see ``install``), it lets the project's own launch code run
unchanged on CPU tensors: the grid and block it picks, the arguments it packs and their types.
"Device memory" is modelled strictly: every pointer argument is copied into a buffer with poisoned
guard zones on both sides, so a kernel that reads out of bounds reads NaN and one that writes out
of bounds, or writes an input, fails the launch.
"""
from __future__ import annotations

import ctypes
import sys
import types
from dataclasses import dataclass, field

import numpy as np

from . import build

# Guard zones as large as the buffer (at least a page): an index that overshoots by less than the
# whole buffer (a voxel of an overhanging tile, a batch element too many) lands in poison.
MIN_GUARD_BYTES = 4096
POISON = 0xFF  # as the emulator's shared memory: NaN in float and double
# The pointer parameters of each kernel, in order, with what their extents are in elements (the
# layouts in kernels.cu's header); the int parameters K, D, H, W follow them.
POINTERS = {
    "render_forward": ("means", "conics", "intensities", "radii", "mask", "out"),
    "render_backward": ("means", "conics", "intensities", "radii", "mask", "grad_out", "moments"),
}
OUTPUTS = ("out", "moments")


def _extents(B: int, K: int, V: int) -> dict[str, int]:
    return {"means": B * K * 3, "conics": B * K * 6, "intensities": B * K, "radii": B * K * 3,
            "mask": B * V, "out": B * V, "grad_out": B * V, "moments": B * K * 10}


def _as_kernel_argument(value) -> np.generic:
    """The value CuPy would pass: numpy scalars as they are, Python ints as int64 and floats as
    float64 (so an unconverted Python number shows up as a size mismatch, as it misbehaves on a GPU)."""
    if isinstance(value, np.generic):
        return value
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):
        return np.int64(value)
    if isinstance(value, float):
        return np.float64(value)
    raise TypeError(f"unsupported kernel argument {value!r} of type {type(value).__name__}")


@dataclass
class Launch:
    """One recorded kernel launch."""

    name: str
    grid: tuple
    block: tuple
    arg_types: tuple
    stream: object


class _Guarded:
    """A copy of one buffer between two poisoned guard zones."""

    def __init__(self, address: int, nbytes: int):
        self.address, self.nbytes = address, nbytes
        self.guard = max(MIN_GUARD_BYTES, nbytes)
        self.storage = np.full(nbytes + 2 * self.guard, POISON, dtype=np.uint8)
        ctypes.memmove(self.device_address, address, nbytes)
        self.original = self.storage.copy()

    @property
    def device_address(self) -> int:
        return self.storage.ctypes.data + self.guard

    def check(self, name: str, written: bool) -> None:
        head, tail = self.storage[:self.guard], self.storage[self.guard + self.nbytes:]
        if (head != POISON).any() or (tail != POISON).any():
            raise build.EmulationError(f"the kernel wrote outside {name} ({self.nbytes} bytes)")
        if not written and (self.storage != self.original).any():
            raise build.EmulationError(f"the kernel wrote into its input {name}")

    def copy_back(self) -> None:
        ctypes.memmove(self.address, self.device_address, self.nbytes)


class Kernel:
    def __init__(self, fake: "FakeCupy", module: build.Module, name: str):
        self.fake, self.module, self.name = fake, module, name
        self.base, _, ctype = name.partition("<")
        self.scalar_bytes = {"float>": 4, "double>": 8}[ctype]

    def __call__(self, grid, block, args, **options):
        if options:
            raise TypeError(f"options {sorted(options)} are not modelled by the stand-in")
        if self.fake.stream is None:
            raise build.EmulationError(f"{self.name} launched outside a stream context: not on torch's stream")
        grid, block = tuple(grid), tuple(block)
        if len(grid) != 3 or len(block) != 3 or grid[1:] != (1, 1) or block[1:] != (1, 1):
            raise build.EmulationError(f"{self.name}: grid {grid} / block {block}; the emulator runs 1-D launches")
        values = [_as_kernel_argument(a) for a in args]
        self.fake.launches.append(Launch(self.name, grid, block, tuple(v.dtype for v in values), self.fake.stream))
        buffers = self._stage(values, grid[0])
        params = [v.tobytes() for v in values]
        for i, buf in buffers.items():
            params[i] = np.uint64(buf.device_address).tobytes()
        self.module.launch(self.name, int(grid[0]), int(block[0]), params, descending=self.fake.descending)
        for i, buf in buffers.items():
            role = POINTERS[self.base][i]
            buf.check(role, written=role in OUTPUTS)
            if role in OUTPUTS:
                buf.copy_back()

    def _stage(self, values, grid_x: int) -> dict[int, _Guarded]:
        """Guarded copies of the non-null pointer arguments, sized from K, D, H, W and the grid."""
        roles = POINTERS[self.base]
        K, D, H, W = (int(v) for v in values[len(roles):len(roles) + 4])
        tile = [self.module.constant(n) for n in ("TILE_Z", "TILE_Y", "TILE_X")]
        tiles = int(np.prod([-(-s // t) for s, t in zip((D, H, W), tile)]))
        if grid_x % tiles:
            raise build.EmulationError(f"{self.name}: grid {grid_x} is not a multiple of the {tiles} tiles")
        extents = _extents(grid_x // tiles, K, D * H * W)
        staged = {}
        for i, role in enumerate(roles):
            element = 1 if role == "mask" else self.scalar_bytes
            if int(values[i]):  # a null mask stays null
                staged[i] = _Guarded(int(values[i]), extents[role] * element)
        return staged


class RawModule:
    """cupy.RawModule(code=, options=, name_expressions=): built for the CPU on compile()."""

    CONSTANTS = ("TILE_Z", "TILE_Y", "TILE_X", "BLOCK_THREADS", "NUM_MOMENTS")

    def __init__(self, fake: "FakeCupy", code: str, options=(), name_expressions=()):
        self.fake, self.code, self.options = fake, code, tuple(options)
        self.name_expressions = tuple(name_expressions)
        self.module = None

    def compile(self):
        library = build.build(self.code, self.name_expressions, self.CONSTANTS)
        self.module = build.load(library)
        self.fake.compiled.append(self)

    def get_function(self, name: str) -> Kernel:
        if name not in self.name_expressions:
            raise build.EmulationError(f"{name} was not among the name_expressions {self.name_expressions}")
        if self.module is None:
            self.compile()
        return Kernel(self.fake, self.module, name)


class _Context:
    """Device / stream context managers: they record what is current, nothing else."""

    def __init__(self, fake: "FakeCupy", attribute: str, value):
        self.fake, self.attribute, self.value = fake, attribute, value

    def __enter__(self):
        self.saved = getattr(self.fake, self.attribute)
        setattr(self.fake, self.attribute, self.value)
        return self

    def __exit__(self, *exc):
        setattr(self.fake, self.attribute, self.saved)


@dataclass
class TorchStream:
    """What the stand-in for torch.cuda.current_stream returns."""

    device: object
    cuda_stream: int = 0x5EED

    def __cuda_stream__(self):
        return (0, self.cuda_stream)


@dataclass
class FakeCupy:
    """State of the stand-in: what was compiled and launched, and the emulator's thread order."""

    descending: bool = False
    launches: list = field(default_factory=list)
    compiled: list = field(default_factory=list)
    device: object = None
    stream: object = None

    def module(self) -> types.ModuleType:
        cupy = types.ModuleType("cupy")
        cupy.__doc__ = __doc__
        cupy.RawModule = lambda code, options=(), name_expressions=(): RawModule(self, code, options, name_expressions)
        stream = types.SimpleNamespace(from_external=lambda s: _Context(self, "stream", ("external", s)))
        cupy.cuda = types.SimpleNamespace(
            Device=lambda index=None: _Context(self, "device", index),
            Stream=stream,
            ExternalStream=lambda ptr, device_id=None: _Context(self, "stream", ("pointer", ptr, device_id)),
        )
        return cupy


def install(monkeypatch, descending: bool = False) -> FakeCupy:
    """Routes backend="cupy" renders of CPU tensors through backend_cupy's launch code onto the
    emulator: the stand-in as ``cupy``, a stand-in for torch.cuda.current_stream, a fresh module
    cache, and resolve_backend without its CUDA-device check (the only check bypassed)."""
    import torch

    from renderer_cupy import backend_cupy, render

    fake = FakeCupy(descending=descending)
    monkeypatch.setitem(sys.modules, "cupy", fake.module())
    monkeypatch.setattr(backend_cupy, "_modules", {})
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: TorchStream(device))
    monkeypatch.setattr(render, "resolve_backend", lambda backend, device: backend)
    return fake
