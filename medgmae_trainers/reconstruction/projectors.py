"""Forward projectors (line integrals of a volume) in torch, on CPU or GPU, with exact adjoints.

Units: lengths are in voxels (the volume's voxels are unit cubes), so a projection value is the sum
of intensities along a ray sampled every voxel. Volumes are [D, H, W] (z, y, x); the rotation axis
is z through the volume's centre ((N - 1) / 2 in voxel indices along each axis).

Parallel beam (`ParallelBeamProjector`), slice by slice, the convention of scikit-image's `radon`:
    view angle theta (V views evenly spaced over 180 degrees); detector axis e_s = (x: cos, y: -sin),
    ray direction e_r = (x: sin, y: cos); bin k sits at s_k = k - (n_det - 1) / 2;
    p[v, z, k] = sum_j bilinear(slice z at centre + s_k e_s + r_j e_r), r_j = j - (n_r - 1) / 2.
  Every z-slice shares one system matrix, so the projector is a sparse matrix A [V*n_det, H*W]
  applied to the D slices at once; its adjoint is the transposed matrix, exact by construction.

Cone beam (`ConeBeamProjector`): a circular orbit of radius `source_distance` (voxels) about the
z axis, V views evenly spaced over 360 degrees, and a flat detector described at the isocentre
(cells of one voxel there: a physical detector at distance DSD has cells DSD / DSO voxels wide,
which gives the same rays). For view beta the source sits at DSO * (x: sin, y: cos), the detector's
u axis is e_u = (x: cos, y: -sin), its v axis is z. Each ray from the source to a cell centre is
sampled every voxel through the volume's bounding sphere with trilinear interpolation
(`grid_sample`); the adjoint is the gradient of <A x, y> in x, exact since A is linear.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F


class ParallelBeamProjector:
    """Parallel beam about z, slice by slice.

    Args:
        shape: (D, H, W) of the volumes it projects.
        num_views: V, angles theta_v = v * 180 / V degrees.
        num_detectors: bins per row (default: ceil of the slice's diagonal, so every ray through the
            slice is seen; scikit-image's `circle=True` uses H for a square slice).
    Sinograms are [V, D, n_det].
    """

    geometry = "parallel"

    def __init__(self, shape: Sequence[int], num_views: int, num_detectors: int | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 angles_deg: Sequence[float] | None = None):
        D, H, W = (int(n) for n in shape)
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.shape = (D, H, W)
        self.device = torch.device(device)
        self.dtype = dtype
        diag = math.hypot(H, W)
        self.num_detectors = int(num_detectors or math.ceil(diag))
        angles = (torch.arange(num_views, dtype=torch.float64) * 180.0 / num_views if angles_deg is None
                  else torch.as_tensor(angles_deg, dtype=torch.float64))
        self.angles_deg = angles
        self.num_views = int(angles.numel())
        # Enough samples per ray to cross the slice's diagonal from any detector bin.
        n_r = int(math.ceil(math.hypot(diag, self.num_detectors))) | 1
        coo = _parallel_system_matrix((H, W), angles, self.num_detectors, n_r).to(self.device, dtype)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is what we use
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = coo.to_sparse_csr()
            self.matrix_t = coo.t().coalesce().to_sparse_csr()

    @property
    def sinogram_shape(self) -> tuple[int, int, int]:
        return (self.num_views, self.shape[0], self.num_detectors)

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        """volume [D, H, W] -> sinogram [V, D, n_det]; differentiable (the backward is A^T)."""
        _check_shape(volume, self.shape, "volume")
        return _SparseProject.apply(volume, self.matrix, self.matrix_t, self.sinogram_shape)

    def adjoint(self, sinogram: torch.Tensor) -> torch.Tensor:
        """sinogram [V, D, n_det] -> [D, H, W], A^T (the unfiltered back-projection)."""
        _check_shape(sinogram, self.sinogram_shape, "sinogram")
        return _backproject_slices(self.matrix_t, sinogram, self.shape)


def _check_shape(t: torch.Tensor, shape, name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def _project_slices(matrix: torch.Tensor, volume: torch.Tensor, sino_shape) -> torch.Tensor:
    """A [V*n, H*W] applied to every z-slice: volume [D, H, W] -> sinogram [V, D, n]."""
    D = volume.shape[0]
    V, _, n = sino_shape
    cols = volume.reshape(D, -1).t()  # the D slices as the columns of a [H*W, D] right-hand side
    return (matrix @ cols).reshape(V, n, D).permute(0, 2, 1).contiguous()


def _backproject_slices(matrix_t: torch.Tensor, sinogram: torch.Tensor, volume_shape) -> torch.Tensor:
    """A^T [H*W, V*n] applied per z: sinogram [V, D, n] -> volume [D, H, W]."""
    V, D, n = sinogram.shape
    cols = sinogram.permute(0, 2, 1).reshape(V * n, D)
    return (matrix_t @ cols).t().reshape(volume_shape).contiguous()


class _SparseProject(torch.autograd.Function):
    """y = A x with the backward A^T g (torch's sparse autograd is avoided: CSR @ dense is fastest)."""

    @staticmethod
    def forward(ctx, volume, matrix, matrix_t, sino_shape):
        ctx.save_for_backward(matrix_t)
        ctx.volume_shape = tuple(volume.shape)
        return _project_slices(matrix, volume.contiguous(), sino_shape)

    @staticmethod
    def backward(ctx, grad):
        (matrix_t,) = ctx.saved_tensors
        return _backproject_slices(matrix_t, grad.contiguous(), ctx.volume_shape), None, None, None


def _parallel_system_matrix(hw: tuple[int, int], angles_deg: torch.Tensor, n_det: int, n_r: int) -> torch.Tensor:
    """COO [V * n_det, H * W] of bilinear ray sampling (unit steps), duplicates summed."""
    H, W = hw
    theta = torch.deg2rad(angles_deg)[:, None, None]                      # [V, 1, 1]
    s = (torch.arange(n_det, dtype=torch.float64) - (n_det - 1) / 2)[None, :, None]
    r = (torch.arange(n_r, dtype=torch.float64) - (n_r - 1) / 2)[None, None, :]
    cos, sin = torch.cos(theta), torch.sin(theta)
    x = (W - 1) / 2 + s * cos + r * sin                                    # [V, n_det, n_r]
    y = (H - 1) / 2 - s * sin + r * cos
    row = (torch.arange(theta.shape[0])[:, None, None] * n_det + torch.arange(n_det)[None, :, None]).expand_as(x)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    rows, cols, vals = [], [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = (y0 + dy).long(), (x0 + dx).long()
            w = wy * wx
            keep = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W) & (w > 0)
            rows.append(row[keep])
            cols.append(yi[keep] * W + xi[keep])
            vals.append(w[keep])
    idx = torch.stack([torch.cat(rows), torch.cat(cols)])
    return torch.sparse_coo_tensor(idx, torch.cat(vals), (theta.shape[0] * n_det, H * W),
                                   check_invariants=False).coalesce()


class ConeBeamProjector:
    """Circular-orbit cone beam with a flat detector (see the module docstring for the geometry).

    Args:
        shape: (D, H, W).
        num_views: V, source angles beta_v = v * 360 / V degrees.
        source_distance: DSO in voxels (default 2 * the largest edge: a cone half-angle near 14 degrees).
        detector: (n_v, n_u) cells at the isocentre (default: the whole volume's shadow).
        views_per_chunk: views ray-marched at once (memory: chunk * n_v * n_u * n_samples * 3 floats).
    Projections are [V, n_v, n_u].
    """

    geometry = "cone"

    def __init__(self, shape: Sequence[int], num_views: int, source_distance: float | None = None,
                 detector: Sequence[int] | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, views_per_chunk: int = 4):
        D, H, W = (int(n) for n in shape)
        self.shape = (D, H, W)
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_views = int(num_views)
        self.source_distance = float(source_distance or 2.0 * max(D, H, W))
        self.radius = 0.5 * math.sqrt(D * D + H * H + W * W)  # bounding sphere of the volume
        if self.source_distance <= self.radius + 1:
            raise ValueError(f"source distance {self.source_distance} must exceed the volume's radius {self.radius:.1f}")
        dso, r_xy = self.source_distance, 0.5 * math.hypot(H, W)
        if detector is None:
            u_max = dso * r_xy / math.sqrt(dso ** 2 - r_xy ** 2)   # tangent ray of the bounding cylinder
            v_max = 0.5 * D * dso / (dso - r_xy)                   # top edge at the nearest point
            detector = (2 * math.ceil(v_max) + 1, 2 * math.ceil(u_max) + 1)
        self.detector = (int(detector[0]), int(detector[1]))
        self.angles_deg = torch.arange(self.num_views, dtype=torch.float64) * 360.0 / self.num_views
        self.num_samples = int(math.ceil(2 * self.radius)) + 1
        self.views_per_chunk = max(1, int(views_per_chunk))

    @property
    def sinogram_shape(self) -> tuple[int, int, int]:
        return (self.num_views, *self.detector)

    def _grid(self, views: torch.Tensor) -> tuple[torch.Tensor, float]:
        """grid_sample coordinates [n, n_v, n_u, n_samples, 3] (x, y, z order) of the rays of `views`."""
        D, H, W = self.shape
        nv, nu = self.detector
        dso = self.source_distance
        beta = torch.deg2rad(self.angles_deg[views].to(self.device, torch.float64))[:, None, None]  # [n, 1, 1]
        u = (torch.arange(nu, device=self.device, dtype=torch.float64) - (nu - 1) / 2)[None, None, :]
        v = (torch.arange(nv, device=self.device, dtype=torch.float64) - (nv - 1) / 2)[None, :, None]
        cos, sin = torch.cos(beta), torch.sin(beta)
        src = torch.stack(torch.broadcast_tensors(dso * sin, dso * cos, torch.zeros_like(beta)), -1)  # x, y, z
        cell = torch.stack(torch.broadcast_tensors(u * cos, -u * sin, v), -1)
        direction = cell - src
        direction = direction / direction.norm(dim=-1, keepdim=True)
        # samples every voxel along the ray, centred on the point nearest the rotation axis
        t = (torch.arange(self.num_samples, device=self.device, dtype=torch.float64)
             - (self.num_samples - 1) / 2)[:, None] + (-src.unsqueeze(-2) * direction.unsqueeze(-2)).sum(-1, keepdim=True)
        points = src.unsqueeze(-2) + t * direction.unsqueeze(-2)           # [n, nv, nu, ns, 3] in voxels
        # align_corners=False: voxel centre i of an edge of N voxels sits at 2 * pos / N, pos = i - (N - 1) / 2
        scale = torch.tensor([2.0 / W, 2.0 / H, 2.0 / D], device=self.device, dtype=torch.float64)
        return (points * scale).to(self.dtype), 1.0

    def __call__(self, volume: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """volume [D, H, W] -> projections [len(views), n_v, n_u] (all views by default); differentiable."""
        _check_shape(volume, self.shape, "volume")
        views = torch.arange(self.num_views) if views is None else torch.as_tensor(views).reshape(-1)
        vol = volume[None, None]
        out = []
        for chunk in views.split(self.views_per_chunk):
            grid, step = self._grid(chunk)
            n, nv, nu, ns, _ = grid.shape
            samples = F.grid_sample(vol.expand(n, -1, -1, -1, -1), grid, mode="bilinear",
                                    padding_mode="zeros", align_corners=False)  # [n, 1, nv, nu, ns]
            out.append(samples[:, 0].sum(-1) * step)
        return torch.cat(out)

    def adjoint(self, sinogram: torch.Tensor) -> torch.Tensor:
        """projections [V, n_v, n_u] -> [D, H, W]: A^T y as the gradient of <A x, y> (exact for linear A)."""
        _check_shape(sinogram, self.sinogram_shape, "sinogram")
        x = torch.zeros(self.shape, device=sinogram.device, dtype=sinogram.dtype, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad((self(x) * sinogram).sum(), x)
        return grad


GEOMETRIES = {"parallel": ParallelBeamProjector, "cone": ConeBeamProjector}  # what `--geometry` offers


def make_projector(geometry: str, shape: Sequence[int], num_views: int, device="cpu", **kwargs):
    """The projector of `geometry` (one of `GEOMETRIES`) for volumes of `shape`."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; expected one of {tuple(GEOMETRIES)}")
    return GEOMETRIES[geometry](shape, num_views, device=device, **kwargs)
