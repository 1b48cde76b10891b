"""Render one phantom case: paint tissues and labels on the scanner's grid, then turn tissues into HU.

Painting works on a tissue-id volume and a label volume; HU come last from the case's per-tissue
table (its contrast phase and scanner offset) plus smooth texture, scanner noise, the
reconstruction kernel's in-plane blur and the slice thickness, so every voxel's intensity follows
from what tissue it is. Shapes are deformed by two smooth random fields: one for the whole case
(neighbouring organs deform together, wavelengths 90-220 mm) and one per organ (its own shape,
45-90 mm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import SKIN_MM, TISSUE_ID, TISSUES, CaseSpec, Structure, build_structures, diaphragm_z, lung_floor
from .lesions import incidental_structures
from .shapes import Grid, Tube, Warp

TEXTURE_GRAIN_MM = 8.0
SLICE_PROFILE_SIGMA = 0.4  # slices, the Gaussian equivalent of a slice sensitivity profile one spacing wide
CASE_WARP_MM = 8.0
RIB_DROP_MM = 100.0
ORGAN_WAVELENGTH_MM = (45.0, 90.0)  # shorter than the case field's: each organ gets its own shape
# Amplitude (mm) of each organ's own deformation field (organs not listed deform with the case only).
LOCAL_WARP_MM = {"liver": 10.0, "spleen": 8.0, "stomach": 7.0, "right kidney": 4.0, "left kidney": 4.0,
                 "pancreas": 5.0, "gall bladder": 5.0, "duodenum": 4.0, "bladder": 5.0, "prostate/uterus": 4.0,
                 "right adrenal gland": 2.0, "left adrenal gland": 2.0}


@dataclass
class RenderedCase:
    hu: np.ndarray  # int16 [z, y, x]
    label: np.ndarray  # uint8 [z, y, x]
    spacing: tuple[float, float, float]  # (z, y, x)
    origin: tuple[float, float, float]  # physical position of voxel [0, 0, 0], (z, y, x)
    flips: tuple[bool, bool, bool]
    blocked: dict  # organ label -> [voxels its shape wanted but another organ held, voxels it wanted]


def case_grid(spec: CaseSpec) -> tuple[Grid, tuple[float, float, float]]:
    """The scan's grid: the body plus a margin (and the table) in-plane, z_bottom..z_top along z."""
    lo = (spec.z_bottom, -spec.half_depth - 15.0, -spec.half_width - 15.0)
    hi = (spec.z_top, spec.half_depth + 28.0, spec.half_width + 15.0)
    shape = tuple(int(np.floor((h - l) / s)) + 1 for l, h, s in zip(lo, hi, spec.spacing))
    origin = tuple(h if f else l for l, h, f in zip(lo, hi, spec.flips))
    return Grid.from_geometry(shape, spec.spacing, origin, spec.flips), origin


def render_case(spec: CaseSpec, noise_seed: int, extra_structures=()) -> RenderedCase:
    """`extra_structures` (findings) are painted after the anatomy and the incidental lesions."""
    grid, origin = case_grid(spec)
    tissue = np.zeros(grid.shape, np.uint8)  # 0 = air
    label = np.zeros(grid.shape, np.uint8)
    rn = _paint_body(grid, spec, tissue)
    _paint_lungs(grid, spec, tissue)
    _paint_ribs(grid, spec, tissue, rn)
    del rn
    warps = _warps(spec)
    blocked: dict[int, list[int]] = {}
    lesions = incidental_structures(spec) if spec.incidental else []
    for st in [*build_structures(spec), *lesions, *extra_structures]:
        warp = warps.get(st.organ, warps[""])
        _paint_structure(grid, spec, st, warp, tissue, label, blocked)
    hu = _intensities(grid, spec, tissue, np.random.default_rng(noise_seed))
    return RenderedCase(hu, label, spec.spacing, origin, spec.flips, blocked)


def _warps(spec: CaseSpec) -> dict[str, Warp]:
    """The case's field ('') and, per organ, the case's field plus the organ's own shorter one."""
    seq = np.random.SeedSequence(spec.warp_seed)
    case_seq, *organ_seqs = seq.spawn(1 + len(LOCAL_WARP_MM))
    case = Warp.random(np.random.default_rng(case_seq), amplitude_mm=CASE_WARP_MM)
    out = {"": case}
    for (organ, amp), s in zip(LOCAL_WARP_MM.items(), organ_seqs):
        local = Warp.random(np.random.default_rng(s), amplitude_mm=amp, wavelength_mm=ORGAN_WAVELENGTH_MM)
        out[organ] = case.combined(local)
    return out


def _paint_body(grid: Grid, spec: CaseSpec, tissue: np.ndarray) -> np.ndarray:
    """Skin, subcutaneous fat, the muscle wall and the visceral-fat cavity, as elliptic shells whose
    size varies gently along z; plus the scanner table under the patient. Returns the normalised
    elliptic radius (1 = skin surface) that the ribs reuse."""
    z, y, x = grid.coords[0][:, None, None], grid.coords[1][None, :, None], grid.coords[2][None, None, :]
    a = spec.half_width * (1 + 0.03 * np.sin(z / 70.0))
    b = spec.half_depth * (1 + 0.03 * np.cos(z / 55.0))
    rn = np.sqrt((x / a) ** 2 + (y / b) ** 2, dtype=np.float32)
    r_mean = 0.5 * (spec.half_width + spec.half_depth)
    layers = (
        (1.0, "skin"),
        (1 - SKIN_MM / r_mean, "subcutaneous fat"),
        (1 - (SKIN_MM + spec.fat_mm) / r_mean, "muscle"),
        (1 - (SKIN_MM + spec.fat_mm + spec.muscle_mm) / r_mean, "visceral fat"),
    )
    for radius, name in layers:
        tissue[rn <= radius] = TISSUE_ID[name]
    table_y = (grid.coords[1] > spec.half_depth + 12) & (grid.coords[1] < spec.half_depth + 24)
    tissue[:, table_y, :] = TISSUE_ID["table"]
    return rn


def _paint_lungs(grid: Grid, spec: CaseSpec, tissue: np.ndarray) -> None:
    """Lung bases: the cavity above the diaphragm (its domes and posterior recesses)."""
    y, x = grid.coords[1][:, None], grid.coords[2][None, :]
    floor = np.maximum(diaphragm_z(spec, y, x), lung_floor(spec))
    rows = np.nonzero(grid.coords[0] > floor.min())[0]
    if rows.size == 0:
        return
    sl = slice(rows.min(), rows.max() + 1)
    above = grid.coords[0][sl, None, None] > floor[None]
    view = tissue[sl]
    view[above & (view == TISSUE_ID["visceral fat"])] = TISSUE_ID["lung"]


def _paint_ribs(grid: Grid, spec: CaseSpec, tissue: np.ndarray, rn: np.ndarray) -> None:
    """Ribs as arcs in the chest wall: each starts beside the spine and slopes down anteriorly;
    the lower ribs are shorter (floating ribs). Each falls RIB_DROP_MM from its posterior to its
    anterior end, so an axial slice cuts several ribs into short oblique segments, as in patients.
    Evaluated only on the thin shell where ribs can be."""
    r_mean = 0.5 * (spec.half_width + spec.half_depth)
    ring = 1 - (SKIN_MM + spec.fat_mm + 0.5 * spec.muscle_mm) / r_mean
    top = 55.0 * spec.height_scale + spec.breath_mm
    rows = np.nonzero(grid.coords[0] > top - 11 * 24 * spec.height_scale - RIB_DROP_MM - 10)[0]
    if rows.size == 0:
        return
    sl = slice(rows.min(), rows.max() + 1)
    iz, iy, ix = np.nonzero(np.abs(rn[sl] - ring) < 4.5 / r_mean)
    z = grid.coords[0][sl][iz]
    theta = np.abs(np.arctan2(grid.coords[2][ix], grid.coords[1][iy])) / np.pi  # 0 posterior, 1 anterior
    bone = np.zeros(z.shape, bool)
    for k in range(11):
        reach = 0.85 if k < 7 else 0.85 - 0.12 * (k - 6)
        z_rib = top - k * 24.0 * spec.height_scale - RIB_DROP_MM * theta
        bone |= (theta > 0.1) & (theta < reach) & (np.abs(z - z_rib) < 5.5)
    tissue[sl][iz[bone], iy[bone], ix[bone]] = TISSUE_ID["rib"]


def _paint_structure(grid: Grid, spec: CaseSpec, st: Structure, warp: Warp,
                     tissue: np.ndarray, label: np.ndarray, blocked: dict) -> None:
    """Paint one structure; a labelled one only where no other organ's label is (counted in `blocked`)."""
    margin = warp.max_displacement if st.warp else 0.0
    count = blocked.setdefault(st.label, [0, 0]) if st.label and st.name == st.organ else None
    tid = TISSUE_ID[st.tissue]
    only = [TISSUE_ID[t] for t in st.only_over]
    pieces = list(_pieces(st, margin))
    shared = _shared_warp(grid, pieces, warp) if st.warp else None
    for lo, hi, inside in pieces:
        found = grid.box(lo, hi)
        if found is None:
            continue
        sl, (z, y, x) = found
        if shared is not None:  # this piece's part of the coordinates warped once for the structure
            start, q_all = shared
            q = [c[tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl, start))] for c in q_all]
        else:
            q = warp.apply(z, y, x) if st.warp else (z, y, x)
        mask = inside(*q)
        if st.below_diaphragm:
            mask &= z < diaphragm_z(spec, y, x) - 2.0
        t_view, l_view = tissue[sl], label[sl]
        if only:
            mask &= np.isin(t_view, only)
        if st.label:
            free = (l_view == 0) | (l_view == st.label)
            if count is not None:
                count[0] += int(np.count_nonzero(mask & ~free))
                count[1] += int(np.count_nonzero(mask))
            mask &= free
        t_view[mask] = tid
        l_view[mask] = st.label
        if st.air_above_y is not None:
            t_view[mask & (y < st.air_above_y)] = TISSUE_ID["air"]


def _shared_warp(grid: Grid, pieces: list, warp: Warp):
    """Warped coordinates over the union of overlapping pieces' boxes ((start indices, [qz, qy, qx])),
    when that box is smaller than the pieces' boxes together (the liver's lobes, a tube's capsules);
    else None (each piece is warped in its own box)."""
    boxes = [grid.box(lo, hi) for lo, hi, _ in pieces]
    boxes = [b[0] for b in boxes if b is not None]
    if len(boxes) < 2:
        return None
    start = [min(b[a].start for b in boxes) for a in range(3)]
    stop = [max(b[a].stop for b in boxes) for a in range(3)]
    union = np.prod([e - s for s, e in zip(start, stop)])
    if union >= sum(np.prod([s.stop - s.start for s in b]) for b in boxes):
        return None
    z, y, x = (c[s:e].reshape(v) for c, s, e, v in zip(grid.coords, start, stop, ((-1, 1, 1), (1, -1, 1), (1, 1, -1))))
    return start, [np.broadcast_to(q, (len(z), y.shape[1], x.shape[2])) for q in warp.apply(z, y, x)]


def _pieces(st: Structure, margin: float):
    """(lo, hi, inside-function) for each convex piece; tubes split into capsules so each is
    evaluated only in its own bounding box."""
    for shape in st.shapes:
        if isinstance(shape, Tube):
            for a, b, ra, rb in shape.segments():
                lo, hi = Tube.segment_bounds(a, b, ra, rb, margin)
                yield lo, hi, (lambda z, y, x, a=a, b=b, ra=ra, rb=rb: Tube.inside_segment(a, b, ra, rb, z, y, x))
        else:
            lo, hi = shape.bounds(margin)
            yield lo, hi, shape.inside


def _intensities(grid: Grid, spec: CaseSpec, tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU = the case's tissue mean (phase, scanner offset) + tissue-scaled smooth texture + noise,
    blurred in-plane by the kernel and along z by the slice profile."""
    mean = np.array([spec.hu.get(name, TISSUES[name][0]) + (spec.hu_offset if name != "air" else 0.0)
                     for name in TISSUES], np.float32)
    amp = np.array([spec.texture.get(name, TISSUES[name][1]) for name in TISSUES], np.float32)
    hu = mean[tissue]
    hu += amp[tissue] * _smooth_field(grid, rng)
    hu += rng.standard_normal(tissue.shape, dtype=np.float32) * (1.8 * spec.noise_hu)
    in_plane = spec.spacing[1]
    for axis in (1, 2):  # the blur also correlates the noise, as a reconstruction kernel does
        ndimage.gaussian_filter1d(hu, spec.blur_mm / in_plane, axis=axis, output=hu, truncate=3.0)
    # a slice integrates over its thickness (= the spacing): partial volume between neighbours
    ndimage.gaussian_filter1d(hu, SLICE_PROFILE_SIGMA, axis=0, output=hu, truncate=2.5)
    np.clip(hu, -1024, 3071, out=hu)
    return np.rint(hu).astype(np.int16)


def _smooth_field(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise on a coarse grid (TEXTURE_GRAIN_MM), linearly upsampled to the scan's grid.

    Upsampling is one interpolation matrix per axis applied with matmul (BLAS), several times
    faster than ndimage.zoom on volumes of tens of millions of voxels."""
    extents = [abs(float(c[-1] - c[0])) for c in grid.coords]
    coarse = [max(2, int(e / TEXTURE_GRAIN_MM) + 2) for e in extents]
    field = rng.standard_normal(coarse).astype(np.float32)
    mz, my, mx = (_linear_interp_matrix(c, n) for c, n in zip(coarse, grid.shape))
    field = field @ mx.T  # [cz, cy, nx]
    field = np.matmul(my, field)  # [cz, ny, nx]
    field = (mz @ field.reshape(coarse[0], -1)).reshape(grid.shape)
    return field * 1.4


def _linear_interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of linear interpolation with end points aligned."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m
