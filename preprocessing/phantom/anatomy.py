"""The phantom's anatomy: tissues with their Hounsfield units, and organs as shapes in millimetres.

Frame: nnU-Net/ITK's LPS, centred on the body axis. +x is the patient's left, +y posterior,
+z superior; z = 0 is the top of the right hemidiaphragm. Positions are written for a reference
patient (half-width 155 mm, half-depth 115 mm) and scaled per case (`CaseSpec`). Coordinates in
tuples are (z, y, x) like the arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..labels import AMOS_LABELS
from .shapes import Ellipsoid, Tube, rotation_x, rotation_z

# Tissue id -> (mean HU, texture amplitude HU). Per-case contrast overrides the vessel rows.
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "lung": (-850.0, 30.0),
    "subcutaneous fat": (-105.0, 8.0),
    "visceral fat": (-95.0, 10.0),
    "skin": (25.0, 5.0),
    "muscle": (50.0, 8.0),
    "table": (100.0, 10.0),
    "liver": (60.0, 6.0),
    "spleen": (50.0, 5.0),
    "renal cortex": (150.0, 8.0),
    "renal medulla": (110.0, 8.0),
    "bile": (10.0, 3.0),
    "esophagus": (40.0, 5.0),
    "gastric wall": (45.0, 5.0),
    "gastric fluid": (15.0, 4.0),
    "aortic blood": (200.0, 5.0),
    "caval blood": (130.0, 5.0),
    "pancreas": (45.0, 8.0),
    "adrenal": (35.0, 5.0),
    "duodenum": (30.0, 6.0),
    "urine": (8.0, 3.0),
    "prostate/uterus": (40.0, 5.0),
    "bowel": (30.0, 10.0),
    "cortical bone": (900.0, 60.0),
    "cancellous bone": (250.0, 40.0),
    "disc": (85.0, 8.0),
    "csf": (12.0, 4.0),
    "heart": (60.0, 6.0),
    "rib": (600.0, 80.0),
    # Findings (findings.py), appended last so the ids above, and the default phantom's bytes, never change.
    "pleural fluid": (12.0, 3.0),
    "ascitic fluid": (8.0, 3.0),
    "liver lesion": (25.0, 6.0),
    "cyst": (3.0, 2.0),
    "calcification": (650.0, 80.0),
    "nodule": (35.0, 8.0),
    "emphysema": (-975.0, 8.0),
}
TISSUE_ID = {name: i for i, name in enumerate(TISSUES)}

REFERENCE_HALF_WIDTH = 155.0
REFERENCE_HALF_DEPTH = 115.0


@dataclass(frozen=True)
class Structure:
    """One painted structure: the union of `shapes`, written as `tissue` with label `label`.

    Painting order is the order of `build_structures`; later structures overwrite earlier ones.
    `only_over` restricts painting to voxels currently holding one of these tissues (lungs and bowel
    fill the abdominal cavity without eating into muscle); `below_diaphragm` clips to the abdomen;
    `air_above_y` turns voxels anterior to that y into air (the patient lies supine, so gas rises
    anteriorly: the stomach's and the bowel's air-fluid levels).
    """

    name: str
    tissue: str
    label: int
    shapes: tuple
    only_over: tuple[str, ...] = ()
    below_diaphragm: bool = False
    air_above_y: float | None = None
    warp: bool = True


@dataclass(frozen=True)
class CaseSpec:
    """Everything random about one case, drawn once from the seed by `sample_case`."""

    spacing: tuple[float, float, float]  # (z, y, x) mm
    flips: tuple[bool, bool, bool]  # direction matrix -1 on that axis
    half_width: float  # body half-width (x), mm
    half_depth: float  # body half-depth (y), mm
    fat_mm: float  # subcutaneous fat thickness
    height_scale: float  # cranio-caudal stretch of the organ layout
    z_top: float
    z_bottom: float
    hu_override: dict = field(default_factory=dict)
    noise_hu: float = 12.0
    blur_mm: float = 0.6
    organ_shift: dict = field(default_factory=dict)  # name -> (dz, dy, dx)
    organ_scale: dict = field(default_factory=dict)  # name -> factor
    bowel_seed: int = 0
    warp_seed: int = 0
    female: bool = False

    @property
    def pelvis(self) -> bool:
        return self.z_bottom < -300


def sample_case(rng: np.random.Generator) -> CaseSpec:
    """Draw a case: patient size, scan coverage, spacing, orientation, contrast and organ jitter."""
    in_plane = round(float(rng.uniform(0.6, 1.0)), 3)
    slice_mm = round(float(rng.uniform(1.0, 5.0)), 2)
    flip_z = bool(rng.random() < 0.3)
    flip_xy = bool(rng.random() < 0.2)
    pelvis = bool(rng.random() < 0.35)
    height = float(rng.uniform(0.92, 1.08))
    z_bottom = -rng.uniform(375, 400) if pelvis else -rng.uniform(185, 230)
    names = [s.name for s in _reference_structures(female=False, pelvis=True)]
    return CaseSpec(
        spacing=(slice_mm, in_plane, in_plane),
        flips=(flip_z, flip_xy, flip_xy),
        half_width=float(rng.uniform(135, 175)),
        half_depth=float(rng.uniform(98, 130)),
        fat_mm=float(rng.uniform(8, 35)),
        height_scale=height,
        z_top=float(rng.uniform(25, 45)) * height,
        z_bottom=float(z_bottom) * height,
        hu_override={
            "aortic blood": float(rng.uniform(150, 250)),
            "caval blood": float(rng.uniform(110, 150)),
        },
        noise_hu=float(rng.uniform(8, 18)),
        blur_mm=float(rng.uniform(0.4, 0.8)),
        organ_shift={n: tuple(float(v) for v in rng.normal(0, 4.0, 3)) for n in names},
        organ_scale={n: float(rng.uniform(0.88, 1.12)) for n in names},
        bowel_seed=int(rng.integers(2**31)),
        warp_seed=int(rng.integers(2**31)),
        female=bool(rng.random() < 0.5),
    )


def diaphragm_z(spec: CaseSpec, y, x):
    """Height (mm) of the diaphragm over (y, x): two domes, the right one higher, sloping down to
    the posterior costophrenic recesses."""
    sx = spec.half_width / REFERENCE_HALF_WIDTH
    sy = spec.half_depth / REFERENCE_HALF_DEPTH
    right = 0.0 - ((x + 60 * sx) ** 2 + (y - 5 * sy) ** 2) / 260.0
    left = -15.0 * spec.height_scale - ((x - 60 * sx) ** 2 + (y - 5 * sy) ** 2) / 240.0
    return np.maximum(right, left)


def _reference_structures(female: bool, pelvis: bool) -> list[Structure]:
    """Organs, vessels and bones of the reference patient, in painting order (see module docstring)."""
    L = AMOS_LABELS
    rz, rx = rotation_z, rotation_x
    s: list[Structure] = []

    # Abdominal organs, below the diaphragm.
    s.append(Structure("liver", "liver", L["liver"], (
        Ellipsoid((-60, -5, -65), (75, 85, 85), rz(-10)),
        Ellipsoid((-40, -45, 15), (45, 38, 60), rz(15)),
        Ellipsoid((-120, 10, -75), (45, 55, 55)),
    ), below_diaphragm=True))
    s.append(Structure("gall bladder", "bile", L["gall bladder"], (
        Ellipsoid((-110, -55, -55), (38, 17, 17), rx(25)),
    ), below_diaphragm=True))
    s.append(Structure("spleen", "spleen", L["spleen"], (
        Ellipsoid((-70, 40, 88), (52, 48, 24), rz(-35)),
    ), below_diaphragm=True))
    stomach_path = ((-25, 15, 55), (-55, -20, 60), (-85, -45, 35), (-100, -55, 5), (-100, -45, -20))
    s.append(Structure("stomach", "gastric wall", L["stomach"], (
        Tube(stomach_path, (38, 34, 28, 20, 14)),), below_diaphragm=True))
    s.append(Structure("stomach contents", "gastric fluid", L["stomach"], (
        Tube(stomach_path, (33, 29, 23, 15, 9)),), below_diaphragm=True, air_above_y=-30.0))
    s.append(Structure("duodenum", "duodenum", L["duodenum"], (
        Tube(((-100, -45, -22), (-108, -20, -48), (-140, -5, -55), (-162, 5, -30), (-160, 5, 15),
              (-140, -5, 30)), (12, 12, 12, 11, 11, 10)),)))
    s.append(Structure("pancreas", "pancreas", L["pancreas"], (
        Tube(((-125, -15, -35), (-110, -25, -5), (-100, -12, 30), (-90, 15, 65)), (18, 13, 12, 10)),)))
    for side, sign, z0, label in (("right", -1, -135, "right kidney"), ("left", 1, -122, "left kidney")):
        center = (z0, 45, sign * 68)
        s.append(Structure(label, "renal cortex", L[label], (
            Ellipsoid(center, (55, 26, 30), rz(sign * 30)),), below_diaphragm=True))
        s.append(Structure(f"{side} renal medulla", "renal medulla", L[label], (
            Ellipsoid(center, (38, 14, 16), rz(sign * 30)),), below_diaphragm=True))
        adrenal = f"{side} adrenal gland"
        s.append(Structure(adrenal, "adrenal", L[adrenal], (
            Ellipsoid((z0 + 55, 28, sign * 42), (18, 14, 4), rz(sign * 40)),), below_diaphragm=True))

    # Great vessels and the esophagus.
    s.append(Structure("aorta", "aortic blood", L["aorta"], (
        Tube(((80, 8, 14), (-210, 2, 10)), (12, 11)),
        Tube(((-210, 2, 10), (-300, 10, 55)), (8, 7)),
        Tube(((-210, 2, 10), (-300, 10, -45)), (8, 7)),
    ), warp=False))
    s.append(Structure("postcava", "caval blood", L["postcava"], (
        Tube(((-215, 10, -22), (-90, 5, -25), (-20, -5, -35)), (11, 12, 13)),
        Tube(((-215, 10, -22), (-300, 15, -60)), (9, 8)),
        Tube(((-215, 10, -22), (-300, 15, 40)), (9, 8)),
    ), warp=False))
    s.append(Structure("esophagus", "esophagus", L["esophagus"], (
        Tube(((80, 10, 2), (0, 2, 18), (-28, 8, 45)), (8, 8, 9)),), warp=False))

    # Pelvis.
    if pelvis:
        s.append(Structure("bladder", "urine", L["bladder"], (Ellipsoid((-318, -45, 0), (35, 35, 42)),)))
        organ = (Ellipsoid((-300, -10, 0), (30, 20, 35)) if female  # uterus, behind the bladder dome
                 else Ellipsoid((-352, -25, 0), (18, 17, 20)))  # prostate, below the bladder
        s.append(Structure("prostate/uterus", "prostate/uterus", L["prostate/uterus"], (organ,)))
    return s


def _spine_and_bones(spec: CaseSpec) -> list[Structure]:
    """Vertebrae with discs, canal and posterior elements; femoral heads and iliac wings in the pelvis."""
    bodies, cores, discs, arches = [], [], [], []
    for k in range(16):
        top = 60 - k * 36.0
        bodies.append(Tube(((top, 42, 0), (top - 28, 42, 0)), (21, 21)))
        cores.append(Tube(((top - 2, 42, 0), (top - 26, 42, 0)), (18, 18)))
        discs.append(Tube(((top - 28, 42, 0), (top - 36, 42, 0)), (20, 20)))
        arches.append(Ellipsoid((top - 14, 80, 0), (12, 16, 9)))
        arches.append(Ellipsoid((top - 14, 60, -28), (7, 6, 16)))
        arches.append(Ellipsoid((top - 14, 60, 28), (7, 6, 16)))
    bones = [
        Structure("vertebral bodies", "cortical bone", 0, tuple(bodies), warp=False),
        Structure("vertebral marrow", "cancellous bone", 0, tuple(cores), warp=False),
        Structure("discs", "disc", 0, tuple(discs), warp=False),
        Structure("posterior elements", "cortical bone", 0, tuple(arches), warp=False),
        Structure("spinal canal", "csf", 0, (Tube(((80, 68, 0), (-420, 68, 0)), (9, 9)),), warp=False),
    ]
    if spec.pelvis:
        bones.append(Structure("iliac wings", "cortical bone", 0, (
            Ellipsoid((-270, 40, -95), (45, 45, 12), rotation_z(-35)),
            Ellipsoid((-270, 40, 95), (45, 45, 12), rotation_z(35)),
        ), warp=False))
        bones.append(Structure("femoral heads", "cancellous bone", 0, (
            Ellipsoid((-345, 5, -95), (24, 24, 24)), Ellipsoid((-345, 5, 95), (24, 24, 24)),
        ), warp=False))
    return bones


def _soft_tissue_extras(spec: CaseSpec) -> list[Structure]:
    """Unlabelled soft tissue: psoas and paraspinal muscles, the heart above the diaphragm, bowel loops."""
    extras = [
        Structure("paraspinal muscles", "muscle", 0, (
            Tube(((80, 85, -38), (-330, 85, -38)), (22, 22)),
            Tube(((80, 85, 38), (-330, 85, 38)), (22, 22))), warp=False),
        Structure("psoas", "muscle", 0, (
            Tube(((-110, 35, -35), (-260, 30, -60), (-330, 20, -75)), (8, 22, 20)),
            Tube(((-110, 35, 35), (-260, 30, 60), (-330, 20, 75)), (8, 22, 20))), warp=False),
        Structure("heart", "heart", 0, (Ellipsoid((65, -45, 25), (55, 55, 65), rotation_z(20)),), warp=False),
    ]
    rng = np.random.default_rng(spec.bowel_seed)
    loops = []
    for _ in range(60):
        z = rng.uniform(-300, -110)
        loops.append(Ellipsoid((z, rng.uniform(-80, 10), rng.uniform(-110, 110)),
                               tuple(rng.uniform(10, 20, 3)), rotation_z(rng.uniform(0, 180))))
    extras.append(Structure("bowel", "bowel", 0, tuple(loops), only_over=("visceral fat",),
                            air_above_y=-60.0))
    return extras


def _scaled(shape, spec: CaseSpec, shift=(0.0, 0.0, 0.0), scale: float = 1.0):
    """Map a reference shape to this patient: body-size scaling of positions, plus organ jitter
    (scaled about the shape's own centre so organs grow in place)."""
    k = np.array([spec.height_scale, spec.half_depth / REFERENCE_HALF_DEPTH,
                  spec.half_width / REFERENCE_HALF_WIDTH], np.float32)
    size = float(np.cbrt(k.prod())) * scale
    if isinstance(shape, Ellipsoid):
        center = tuple(float(c) for c in np.asarray(shape.center) * k + shift)
        return replace(shape, center=center, radii=tuple(r * size for r in shape.radii))
    pts = np.asarray(shape.points, np.float32) * k
    mid = pts.mean(axis=0)
    pts = mid + (pts - mid) * scale + np.asarray(shift, np.float32)
    return Tube(tuple(tuple(float(v) for v in p) for p in pts), tuple(r * size for r in shape.radii))


def build_structures(spec: CaseSpec) -> list[Structure]:
    """All structures of a case in painting order, mapped to the case's patient."""
    organs = _reference_structures(spec.female, spec.pelvis)
    out = []
    for st in _soft_tissue_extras(spec) + organs + _spine_and_bones(spec):
        owner = _jitter_owner(st.name)
        shift = spec.organ_shift.get(owner, (0.0, 0.0, 0.0)) if st.warp else (0.0, 0.0, 0.0)
        scale = spec.organ_scale.get(owner, 1.0) if st.warp else 1.0
        shapes = tuple(_scaled(sh, spec, shift, scale) for sh in st.shapes)
        air = st.air_above_y
        if air is not None:
            air = air * spec.half_depth / REFERENCE_HALF_DEPTH + shift[1]
        out.append(replace(st, shapes=shapes, air_above_y=air))
    return out


def _jitter_owner(name: str) -> str:
    """Inner parts move with their organ (the medulla with its kidney, contents with the stomach)."""
    return {"stomach contents": "stomach", "right renal medulla": "right kidney",
            "left renal medulla": "left kidney"}.get(name, name)


def expected_labels(spec: CaseSpec) -> list[int]:
    """Labels of the organs whose centre lies well inside the scanned z-range: every such organ must
    appear in the case (organs cut by the scan's ends may appear too)."""
    present = set()
    for st in build_structures(spec):
        lo, hi = _z_extent(st)
        if st.label and spec.z_bottom + 20 < (lo + hi) / 2 < spec.z_top - 20:
            present.add(st.label)
    return sorted(present)


def _z_extent(st: Structure) -> tuple[float, float]:
    bounds = [sh.bounds(0.0) for sh in st.shapes]
    return min(b[0][0] for b in bounds), max(b[1][0] for b in bounds)
