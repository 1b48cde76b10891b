"""Geometry primitives for the phantom, evaluated only inside each shape's bounding box.

All positions are physical millimetres in nnU-Net/ITK's LPS frame, arrays are indexed [z, y, x].
A `Grid` maps each array axis to one physical axis (direction matrices are diagonal with +-1
entries, as scanners write them), so a sub-box is a slice per axis and coordinates broadcast.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates per array axis: `coords[a][i]` is the physical position (mm) of index i.

    Axis order (z, y, x). `coords` are monotonic (decreasing where the direction is flipped).
    """

    coords: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def from_geometry(cls, shape, spacing, origin, flips) -> "Grid":
        """shape/spacing/origin/flips in (z, y, x) order; flips[a] True means direction -1 on that axis."""
        coords = tuple(
            (o + (-1.0 if f else 1.0) * s * np.arange(n)).astype(np.float32)
            for n, s, o, f in zip(shape, spacing, origin, flips)
        )
        return cls(coords)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(c) for c in self.coords)

    def box(self, lo, hi):
        """Slices and broadcastable coordinates (z [n,1,1], y [1,n,1], x [1,1,n]) of the voxels whose
        centres lie in the physical box [lo, hi] (both (z, y, x)); None where the box misses the grid."""
        slices, sub = [], []
        for axis, (c, a, b) in enumerate(zip(self.coords, lo, hi)):
            idx = np.nonzero((c >= a) & (c <= b))[0]
            if idx.size == 0:
                return None
            sl = slice(int(idx[0]), int(idx[-1]) + 1)
            view = [1, 1, 1]
            view[axis] = -1
            slices.append(sl)
            sub.append(c[sl].reshape(view))
        return tuple(slices), tuple(sub)


@dataclass(frozen=True)
class Warp:
    """A smooth random displacement (a few sinusoids per axis). Amplitude in mm. The renderer uses
    one for the whole case (neighbouring organs deform together) combined with a shorter-wavelength
    one per organ (its own shape)."""

    amp: np.ndarray  # [3 axes, n terms]
    freq: np.ndarray  # [3 axes, n terms, 3]  (cycles per mm along z, y, x)
    phase: np.ndarray  # [3 axes, n terms]

    @classmethod
    def random(cls, rng: np.random.Generator, amplitude_mm: float, n_terms: int = 3,
               wavelength_mm: tuple[float, float] = (90.0, 220.0)) -> "Warp":
        amp = rng.uniform(0.3, 1.0, (3, n_terms)) * amplitude_mm / n_terms
        wavelength = rng.uniform(*wavelength_mm, (3, n_terms, 1))
        direction = rng.normal(size=(3, n_terms, 3))
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        return cls(amp, direction / wavelength, rng.uniform(0, 2 * np.pi, (3, n_terms)))

    def combined(self, other: "Warp") -> "Warp":
        """The sum of both displacements (their terms side by side)."""
        return Warp(np.concatenate([self.amp, other.amp], 1), np.concatenate([self.freq, other.freq], 1),
                    np.concatenate([self.phase, other.phase], 1))

    @property
    def max_displacement(self) -> float:
        return float(self.amp.sum(axis=1).max())

    def apply(self, z, y, x):
        """Displaced coordinates (z', y', x') of the broadcastable inputs z [n,1,1], y [1,n,1], x [1,1,n].

        sin(A(z) + B(y, x)) = sin A cos B + cos A sin B: only 1D and 2D sines are evaluated, the
        3D work is multiply-adds (this is the phantom's hottest loop)."""
        out = []
        for axis, base in enumerate((z, y, x)):
            disp = 0.0
            for t in range(self.amp.shape[1]):
                # Python floats keep the float32 coordinates float32 (numpy scalars would promote)
                fz, fy, fx = (2 * np.pi * float(f) for f in self.freq[axis, t])
                a = fz * z + float(self.phase[axis, t])
                b = fy * y + fx * x
                disp = disp + float(self.amp[axis, t]) * (np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b))
            out.append(base + disp)
        return out


def rotation_z(deg: float) -> np.ndarray:
    """Rotation about the cranio-caudal axis, in (z, y, x) coordinates."""
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float32)


def rotation_x(deg: float) -> np.ndarray:
    """Rotation about the left-right axis (tilts a shape in the sagittal plane)."""
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float32)


@dataclass(frozen=True)
class Ellipsoid:
    """Points p with |R^T (p - center) / radii| <= 1; center and radii in (z, y, x) mm."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3, dtype=np.float32))

    def bounds(self, margin: float):
        r = max(self.radii) + margin
        return [c - r for c in self.center], [c + r for c in self.center]

    def inside(self, z, y, x) -> np.ndarray:
        d = (z - self.center[0], y - self.center[1], x - self.center[2])
        acc = 0.0
        for row in range(3):  # local axis `row` = R^T d
            local = self.rotation[0, row] * d[0] + self.rotation[1, row] * d[1] + self.rotation[2, row] * d[2]
            acc = acc + (local / self.radii[row]) ** 2
        return acc <= 1.0


@dataclass(frozen=True)
class Tube:
    """A chain of capsules through `points` ((z, y, x) mm) with radii interpolated along each segment:
    vessels, the esophagus, the bowel, the pancreas and the stomach's J-shape."""

    points: tuple[tuple[float, float, float], ...]
    radii: tuple[float, ...]

    def segments(self):
        for i in range(len(self.points) - 1):
            yield (np.asarray(self.points[i], np.float32), np.asarray(self.points[i + 1], np.float32),
                   self.radii[i], self.radii[i + 1])

    def bounds(self, margin: float):
        pts = np.asarray(self.points, np.float32)
        r = max(self.radii) + margin
        return list(pts.min(axis=0) - r), list(pts.max(axis=0) + r)

    @staticmethod
    def segment_bounds(a, b, ra, rb, margin):
        r = max(ra, rb) + margin
        return list(np.minimum(a, b) - r), list(np.maximum(a, b) + r)

    @staticmethod
    def inside_segment(a, b, ra, rb, z, y, x) -> np.ndarray:
        ab = b - a
        length2 = float(ab @ ab) or 1e-6
        t = ((z - a[0]) * ab[0] + (y - a[1]) * ab[1] + (x - a[2]) * ab[2]) / length2
        t = np.clip(t, 0.0, 1.0)
        dist2 = (z - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (x - a[2] - t * ab[2]) ** 2
        radius = ra + t * (rb - ra)
        return dist2 <= radius * radius
