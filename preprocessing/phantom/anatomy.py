"""The phantom's anatomy: tissues with their Hounsfield units, and organs as shapes in millimetres.

Frame: nnU-Net/ITK's LPS, centred on the body axis. +x is the patient's left, +y posterior,
+z superior; z = 0 is the top of the right hemidiaphragm at end-inspiration of the reference
patient. Positions are written for a reference patient (abdominal cavity, inside the muscle wall,
of half-width 123 mm and half-depth 83 mm) and scaled per case with the case's cavity; organ sizes,
shape modes, breathing and body habitus come from `population.sample_case` (`CaseSpec`).
Coordinates in tuples are (z, y, x) like the arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..labels import AMOS_LABELS
from .shapes import Ellipsoid, Tube, rotation_x, rotation_z

# Tissue id -> (mean HU, texture amplitude HU). A case's contrast phase overrides the means of the
# enhancing tissues (phases.HU_BY_PHASE); the values here are theirs without contrast.
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "lung": (-850.0, 30.0),
    "subcutaneous fat": (-105.0, 8.0),
    "visceral fat": (-95.0, 10.0),
    "skin": (25.0, 5.0),
    "muscle": (50.0, 8.0),
    "table": (100.0, 10.0),
    "liver": (58.0, 6.0),
    "spleen": (45.0, 5.0),
    "renal cortex": (30.0, 8.0),
    "renal medulla": (30.0, 8.0),
    "renal pelvis": (10.0, 3.0),
    "bile": (10.0, 3.0),
    "esophagus": (40.0, 5.0),
    "gastric wall": (40.0, 5.0),
    "gastric fluid": (15.0, 4.0),
    "aortic blood": (42.0, 5.0),
    "caval blood": (42.0, 5.0),
    "portal blood": (42.0, 5.0),
    "hepatic venous blood": (42.0, 5.0),
    "pancreas": (40.0, 8.0),
    "adrenal": (32.0, 5.0),
    "duodenum": (35.0, 6.0),
    "urine": (8.0, 3.0),
    "prostate/uterus": (40.0, 5.0),
    "bowel wall": (38.0, 8.0),
    "bowel fluid": (15.0, 6.0),
    "faeces": (-60.0, 70.0),  # mottled: gas bubbles in soft matter
    "cortical bone": (900.0, 60.0),
    "cancellous bone": (250.0, 40.0),
    "disc": (85.0, 8.0),
    "csf": (12.0, 4.0),
    "heart": (42.0, 6.0),
    "rib": (600.0, 80.0),
    # Findings (findings.py) and incidental lesions (lesions.py).
    "pleural fluid": (12.0, 3.0),
    "ascitic fluid": (8.0, 3.0),
    "liver lesion": (30.0, 6.0),
    "cyst": (5.0, 2.0),
    "calcification": (650.0, 80.0),
    "nodule": (35.0, 8.0),
    "emphysema": (-975.0, 8.0),
}
TISSUE_ID = {name: i for i, name in enumerate(TISSUES)}

# The reference patient's abdominal cavity (inside the muscle wall), which organ positions scale with.
REFERENCE_CAVITY_WIDTH = 123.0
REFERENCE_CAVITY_DEPTH = 83.0
SKIN_MM = 2.0


@dataclass(frozen=True)
class Structure:
    """One painted structure: the union of `shapes`, written as `tissue` with label `label`.

    Painting order is the order of `build_structures`. A labelled structure paints only where no
    other organ's label is yet (organs never overlap: the one painted first keeps the voxel, the
    later one is moulded around it, as the gall bladder sits in its fossa of the liver).
    `only_over` restricts painting to voxels currently holding one of these tissues (lungs and bowel
    fill the abdominal cavity without eating into muscle); `below_diaphragm` clips to the abdomen;
    `air_above_y` turns voxels anterior to that y into air (the patient lies supine, so gas rises
    anteriorly: the stomach's and the bowel's air-fluid levels). `owner` is the organ whose shift,
    size and local deformation it shares (the medulla its kidney's, the hepatic veins the liver's).
    """

    name: str
    tissue: str
    label: int
    shapes: tuple
    only_over: tuple[str, ...] = ()
    below_diaphragm: bool = False
    air_above_y: float | None = None
    warp: bool = True
    owner: str = ""

    @property
    def organ(self) -> str:
        return self.owner or self.name


@dataclass(frozen=True)
class CaseSpec:
    """Everything random about one case, drawn once from the seed by `population.sample_case`."""

    spacing: tuple[float, float, float]  # (z, y, x) mm; the slice thickness equals the z spacing
    flips: tuple[bool, bool, bool]  # direction matrix -1 on that axis
    half_width: float  # body half-width (x) at the skin, mm
    half_depth: float  # body half-depth (y) at the skin, mm
    fat_mm: float  # subcutaneous fat thickness
    muscle_mm: float  # abdominal wall muscle thickness
    height_scale: float  # cranio-caudal stretch of the organ layout
    z_top: float
    z_bottom: float
    phase: str = "portal-venous"
    hu: dict = field(default_factory=dict)  # tissue -> mean HU in this case's phase (phases.HU_BY_PHASE)
    hu_offset: float = 0.0  # the scanner's offset, added to every tissue but air
    texture: dict = field(default_factory=dict)  # tissue -> texture amplitude where the phase changes it
    noise_hu: float = 12.0
    blur_mm: float = 0.6
    breath_mm: float = 0.0  # cranio-caudal shift of the diaphragm and the organs under it
    organ_shift: dict = field(default_factory=dict)  # organ -> (dz, dy, dx)
    organ_scale: dict = field(default_factory=dict)  # organ -> linear size factor (its volume's cube root)
    organ_aspect: dict = field(default_factory=dict)  # organ -> (z, y, x) stretch, product 1
    modes: dict = field(default_factory=dict)  # organ-specific shape modes (population.SHAPE_MODES)
    bowel_seed: int = 0
    warp_seed: int = 0
    lesion_seed: int = 0
    incidental: bool = True  # incidental lesions (lesions.py); off under findings
    female: bool = False
    patient: dict = field(default_factory=dict)  # body measures and drawn organ volumes (population.body)

    @property
    def pelvis(self) -> bool:
        return self.z_bottom < -300

    @property
    def cavity(self) -> tuple[float, float]:
        """Half-depth and half-width (y, x) inside the muscle wall."""
        wall = SKIN_MM + self.fat_mm + self.muscle_mm
        return self.half_depth - wall, self.half_width - wall

    def body_scale(self) -> np.ndarray:
        """(z, y, x) factors from the reference layout to this patient's."""
        cy, cx = self.cavity
        return np.array([self.height_scale, cy / REFERENCE_CAVITY_DEPTH, cx / REFERENCE_CAVITY_WIDTH], np.float32)


def diaphragm_z(spec: CaseSpec, y, x):
    """Height (mm) of the diaphragm over (y, x): two domes, the right one higher, sloping down to
    the posterior costophrenic recesses; the whole of it moves with the breath hold."""
    _, sy, sx = spec.body_scale()
    right = spec.breath_mm - ((x + 60 * sx) ** 2 + (y - 5 * sy) ** 2) / 260.0
    left = spec.breath_mm - 15.0 * spec.height_scale - ((x - 60 * sx) ** 2 + (y - 5 * sy) ** 2) / 240.0
    return np.maximum(right, left)


def lung_floor(spec: CaseSpec) -> float:
    """The lowest z of the lungs (the posterior costophrenic recesses)."""
    return -75.0 * spec.height_scale + spec.breath_mm


# How far each organ follows the diaphragm's breathing shift (the liver and spleen hang from it;
# kidneys move about two thirds as much; the pelvis not at all).
BREATH_FOLLOW = {"liver": 1.0, "gall bladder": 0.9, "spleen": 0.9, "stomach": 0.8, "right kidney": 0.6,
                 "left kidney": 0.6, "right adrenal gland": 0.6, "left adrenal gland": 0.6, "pancreas": 0.5,
                 "duodenum": 0.5, "esophagus": 0.3, "portal vein": 0.6, "splenic vein": 0.5}


def _liver(m: dict) -> list[Structure]:
    """Right lobe (its dome height a mode), left lobe (size a mode), the inferior right lobe, an
    optional Riedel lobe (a tongue of the right lobe reaching down), then its portal and hepatic
    venous branches inside it."""
    L = AMOS_LABELS["liver"]
    ll, dome, low, riedel = m["left_lobe"], m["liver_dome"], m["inferior_right"], m["riedel"]
    pieces = [Ellipsoid((-60, -5, -65), (75 * dome, 85, 85), rotation_z(-10)),
              Ellipsoid((-40, -45, 15 + 30 * (ll - 1)), (45 * np.sqrt(ll), 38, 60 * ll), rotation_z(15)),
              Ellipsoid((-120, 10, -75), (45 * low, 55 * low, 55 * low))]
    if riedel:
        pieces.append(Ellipsoid((-150 - 30 * riedel, 0, -100), (45 * riedel, 30, 28), rotation_x(-10)))
    hilum = (-95, -20, -45)
    portal = (Tube((hilum, (-80, -5, -100), (-70, 20, -120)), (6.0, 4.0, 2.5)),
              Tube((hilum, (-85, -35, -5), (-60, -50, 25)), (5.0, 3.5, 2.5)),
              Tube(((-80, -5, -100), (-120, 0, -95)), (3.5, 2.5)))
    ivc_top = (-25, 0, -32)
    hepatic = (Tube((ivc_top, (-45, 10, -115)), (6.0, 2.5)),
               Tube((ivc_top, (-55, -50, -55)), (5.0, 2.5)),
               Tube((ivc_top, (-35, -40, 15)), (5.0, 2.5)))
    return [Structure("liver", "liver", L, tuple(pieces), below_diaphragm=True),
            Structure("portal branches", "portal blood", L, portal, only_over=("liver",), owner="liver"),
            Structure("hepatic veins", "hepatic venous blood", L, hepatic, only_over=("liver",), owner="liver")]


def _spleen(m: dict) -> Structure:
    """A crescent hugging the left posterolateral wall: three flattened lobes along an arc around the
    body axis, the upper pole posterior, its spread and length modes."""
    rho, phi0, spread, length = 97.0, 66.0, m["spleen_arc"], m["spleen_length"]
    pieces = []
    for k in (-1, 0, 1):
        phi = np.deg2rad(phi0 + k * spread)
        centre = (-70 - k * 22 * length, rho * np.cos(phi), rho * np.sin(phi))
        pieces.append(Ellipsoid(centre, (30 * length, 26, 13 + 3 * (k == 0)), rotation_z(np.rad2deg(phi) - 90)))
    return Structure("spleen", "spleen", AMOS_LABELS["spleen"], tuple(pieces), below_diaphragm=True)


def _kidneys(m: dict) -> list[Structure]:
    """Cortex, medulla and renal pelvis per side; the right kidney lower by a drawn amount, each
    turned about its hilum (the mode `hilum_<side>`, degrees) and tilted; renal veins to the IVC."""
    s = []
    for side, sign in (("right", -1), ("left", 1)):
        label = f"{side} kidney"
        z0 = -122 - (m["kidney_drop"] if side == "right" else 0.0)
        centre = np.array((z0, 45, sign * 68), np.float32)
        rot = rotation_z(sign * m[f"hilum_{side}"]) @ rotation_x(sign * m["kidney_tilt"])
        medial = rot @ np.array((0, 0, -sign * 15.0), np.float32)
        pelvis = tuple(float(v) for v in centre + medial)
        c = tuple(float(v) for v in centre)
        s.append(Structure(label, "renal cortex", AMOS_LABELS[label], (Ellipsoid(c, (55, 26, 30), rot),),
                           below_diaphragm=True))
        s.append(Structure(f"{side} renal medulla", "renal medulla", AMOS_LABELS[label],
                           (Ellipsoid(c, (38, 14, 16), rot),), only_over=("renal cortex",), owner=label))
        s.append(Structure(f"{side} renal pelvis", "renal pelvis", AMOS_LABELS[label],
                           (Ellipsoid(pelvis, (20, 8, 10), rot),), only_over=("renal cortex", "renal medulla"),
                           owner=label))
        adrenal = f"{side} adrenal gland"
        s.append(Structure(adrenal, "adrenal", AMOS_LABELS[adrenal], (
            Ellipsoid((z0 + 55, 28, sign * 42), (18, 14, 4), rotation_z(sign * 40)),), below_diaphragm=True))
    return s


def _renal_veins(m: dict) -> list[Structure]:
    """Renal veins from each hilum to the IVC (unlabelled, painted where no organ is)."""
    tubes = []
    for side, sign in (("right", -1), ("left", 1)):
        z0 = -122 - (m["kidney_drop"] if side == "right" else 0.0)
        tubes.append(Tube(((z0, 35, sign * 42), (z0 + 8, 8, -24)), (5.0, 6.0)))
    return [Structure("renal veins", "caval blood", 0, tuple(tubes), only_over=("visceral fat", "bowel wall",
                                                                                  "bowel fluid", "faeces"))]


def _reference_structures(female: bool, pelvis: bool, modes: dict) -> list[Structure]:
    """Organs, vessels and bones of the reference patient, in painting order: vessels first, then the
    organs from the small to the large, so each organ is moulded around those it touches."""
    L = AMOS_LABELS
    rx = rotation_x
    s: list[Structure] = []
    # Great vessels, the esophagus, the portal and splenic veins.
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
        Tube(((80, -12, 0), (0, -14, 20), (-28, 0, 45)), (8, 8, 9)),), warp=False))
    s.append(Structure("portal vein", "portal blood", 0, (
        Tube(((-128, -12, -12), (-95, -20, -45)), (7.0, 7.0)),)))
    s.append(Structure("splenic vein", "portal blood", 0, (
        Tube(((-128, -12, -12), (-105, 5, 30), (-85, 30, 70)), (5.0, 4.5, 4.0)),)))
    s.extend(_renal_veins(modes))
    # Abdominal organs, small before large.
    s.extend(_kidneys(modes))
    s.append(Structure("pancreas", "pancreas", L["pancreas"], (
        Tube(((-128, -24, -26), (-112, -28, -5), (-100, -12, 30), (-90, 15, 65)), (14, 13, 12, 10)),)))
    s.append(Structure("duodenum", "duodenum", L["duodenum"], (
        # bulb, descending part, then the third part crossing in front of the IVC and aorta
        Tube(((-100, -45, -22), (-108, -20, -48), (-140, -5, -55), (-162, -18, -30), (-160, -24, 15),
              (-140, -15, 30)), (12, 12, 12, 11, 11, 10)),)))
    s.append(Structure("gall bladder", "bile", L["gall bladder"], (
        Ellipsoid((-110, -55, -55), (38, 17, 17), rx(25)),), below_diaphragm=True))
    fill = modes["stomach_fill"]
    stomach_path = ((-25, 15, 55), (-55, -20, 60), (-85, -45, 35), (-100, -55, 5), (-100, -45, -20))
    wall = tuple(r * fill for r in (38, 34, 28, 20, 14))
    s.append(Structure("stomach", "gastric wall", L["stomach"], (Tube(stomach_path, wall),),
                       below_diaphragm=True))
    s.append(Structure("stomach contents", "gastric fluid", L["stomach"],
                       (Tube(stomach_path, tuple(r - 5 for r in wall)),), below_diaphragm=True,
                       air_above_y=-30.0 * fill, only_over=("gastric wall",), owner="stomach"))
    s.append(_spleen(modes))
    s.extend(_liver(modes))
    # Pelvis.
    if pelvis:  # the firm organ first, so the bladder (however full) is moulded against it
        organ = (Ellipsoid((-298, 4, 0), (30, 16, 35)) if female  # uterus, behind the bladder dome
                 else Ellipsoid((-360, -25, 0), (18, 17, 20)))  # prostate, below the bladder
        s.append(Structure("prostate/uterus", "prostate/uterus", L["prostate/uterus"], (organ,)))
        s.append(Structure("bladder", "urine", L["bladder"], (Ellipsoid((-318, -45, 0), (35, 35, 42)),)))
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
    if spec.pelvis:  # iliac wings: a cortical shell around marrow, as thin plates are
        bones.append(Structure("iliac wings", "cortical bone", 0, (
            Ellipsoid((-270, 40, -95), (45, 45, 9), rotation_z(-35)),
            Ellipsoid((-270, 40, 95), (45, 45, 9), rotation_z(35)),
        ), warp=False))
        bones.append(Structure("iliac marrow", "cancellous bone", 0, (
            Ellipsoid((-270, 40, -95), (42, 42, 6), rotation_z(-35)),
            Ellipsoid((-270, 40, 95), (42, 42, 6), rotation_z(35)),
        ), warp=False))
        bones.append(Structure("femoral heads", "cancellous bone", 0, (
            Ellipsoid((-345, 5, -95), (24, 24, 24)), Ellipsoid((-345, 5, 95), (24, 24, 24)),
        ), warp=False))
    return bones


# Bowel loop contents (share of loops): collapsed (wall only), fluid, gas, faeces.
BOWEL_CONTENTS = {"bowel wall": 0.3, "bowel fluid": 0.3, "air": 0.15, "faeces": 0.25}
BOWEL_WALL_MM = 2.5


def _soft_tissue_extras(spec: CaseSpec) -> list[Structure]:
    """Unlabelled soft tissue: psoas and paraspinal muscles, the heart above the diaphragm, the colon
    frame (faeces and gas) and small-bowel loops (each collapsed, fluid-, gas- or faeces-filled)."""
    inside_body = ("subcutaneous fat", "muscle", "visceral fat")
    extras = [
        Structure("paraspinal muscles", "muscle", 0, (
            Tube(((80, 85, -38), (-330, 85, -38)), (22, 22)),
            Tube(((80, 85, 38), (-330, 85, 38)), (22, 22))), only_over=inside_body, warp=False),
        Structure("psoas", "muscle", 0, (
            Tube(((-110, 35, -35), (-260, 30, -60), (-330, 20, -75)), (8, 22, 20)),
            Tube(((-110, 35, 35), (-260, 30, 60), (-330, 20, 75)), (8, 22, 20))), warp=False),
        Structure("heart", "heart", 0, (Ellipsoid((65, -45, 25), (55, 55, 65), rotation_z(20)),), warp=False),
    ]
    rng = np.random.default_rng(spec.bowel_seed)
    names, shares = list(BOWEL_CONTENTS), list(BOWEL_CONTENTS.values())
    colon = ((-230, -20, -105), (-140, -10, -110), (-130, -65, -40), (-125, -60, 50), (-110, 0, 105),
             (-240, 10, 100))
    radius = tuple(float(r) for r in rng.uniform(16, 26, len(colon)))
    walls, contents = [Tube(colon, radius)], {n: [] for n in names}
    contents[names[int(rng.choice(4, p=[0.0, 0.1, 0.3, 0.6]))]].append(
        Tube(colon, tuple(r - BOWEL_WALL_MM for r in radius)))
    for _ in range(int(rng.integers(40, 70))):
        z = rng.uniform(-300, -110)
        radii = tuple(rng.uniform(8, 20, 3))
        loop = dict(center=(z, rng.uniform(-80, 10), rng.uniform(-100, 100)), rotation=rotation_z(rng.uniform(0, 180)))
        walls.append(Ellipsoid(radii=radii, **loop))
        inner = tuple(max(r - BOWEL_WALL_MM, 1.0) for r in radii)
        contents[names[int(rng.choice(4, p=shares))]].append(Ellipsoid(radii=inner, **loop))
    # bowel is drawn at random already: no warp (the costliest step of painting) needed
    extras.append(Structure("bowel", "bowel wall", 0, tuple(walls), only_over=("visceral fat",), warp=False))
    for name in names[1:]:
        if contents[name]:
            extras.append(Structure(f"bowel {name}", name, 0, tuple(contents[name]), only_over=("bowel wall",),
                                    air_above_y=-60.0 if name == "bowel fluid" else None, warp=False))
    return extras


def _scaled(shape, spec: CaseSpec, centre: np.ndarray, shift=(0.0, 0.0, 0.0), scale: float = 1.0,
            aspect=(1.0, 1.0, 1.0)):
    """Map a reference shape to this patient: positions scale with the body; the organ's size (scale
    times its aspect per axis) scales about the organ's own `centre`, so its pieces stay together."""
    k = spec.body_scale()
    a = np.asarray(aspect, np.float32) * scale
    c = np.asarray(centre, np.float32)
    if isinstance(shape, Ellipsoid):
        p = c * k + (np.asarray(shape.center, np.float32) - c) * a + np.asarray(shift, np.float32)
        # radii along the shape's own axes: stretch by the aspect seen along each local axis
        stretch = np.abs(shape.rotation.T) @ a / np.abs(shape.rotation.T).sum(1)
        return replace(shape, center=tuple(float(v) for v in p),
                       radii=tuple(float(r * f) for r, f in zip(shape.radii, stretch)))
    pts = c * k + (np.asarray(shape.points, np.float32) - c) * a + np.asarray(shift, np.float32)
    return Tube(tuple(tuple(float(v) for v in p) for p in pts), tuple(float(r * scale) for r in shape.radii))


# Shape modes of the reference anatomy (population.shape_modes draws around these).
NEUTRAL_MODES = {"left_lobe": 1.0, "liver_dome": 1.0, "inferior_right": 1.0, "riedel": 0.0, "spleen_arc": 20.0,
                 "spleen_length": 1.0, "kidney_drop": 13.0, "hilum_right": 30.0, "hilum_left": 30.0,
                 "kidney_tilt": 0.0, "stomach_fill": 1.0}


def _nominal_volume(shapes) -> float:
    """Sum of the pieces' volumes (overlaps counted twice): enough to compare one organ's modes."""
    v = 0.0
    for sh in shapes:
        if isinstance(sh, Ellipsoid):
            v += 4 / 3 * np.pi * float(np.prod(sh.radii))
        else:
            for a, b, ra, rb in sh.segments():
                v += np.pi * ((ra + rb) / 2) ** 2 * float(np.linalg.norm(b - a))
    return v


def build_structures(spec: CaseSpec) -> list[Structure]:
    """All structures of a case in painting order, mapped to the case's patient.

    Shape modes change an organ's shape, not its volume (drawn in `organ_scale`): each organ's size
    is divided by the cube root of its modes' nominal volume over the neutral modes' one."""
    organs = _reference_structures(spec.female, spec.pelvis, spec.modes)
    neutral = {st.name: st for st in _reference_structures(spec.female, spec.pelvis, NEUTRAL_MODES)}
    centres, mode_size = {}, {}
    for st in organs:  # an organ scales about the centre of its main structure
        if st.name == st.organ:
            centres[st.name] = np.mean([_centre(sh) for sh in st.shapes], axis=0)
            mode_size[st.name] = float(np.cbrt(_nominal_volume(neutral[st.name].shapes) / _nominal_volume(st.shapes)))
    out = []
    for st in _soft_tissue_extras(spec) + organs + _spine_and_bones(spec):
        owner = st.organ
        shift = np.asarray(spec.organ_shift.get(owner, (0.0, 0.0, 0.0)), np.float32) if st.warp else np.zeros(3)
        shift = shift + np.array([spec.breath_mm * BREATH_FOLLOW.get(owner, 0.0), 0, 0], np.float32)
        scale = spec.organ_scale.get(owner, 1.0) * mode_size.get(owner, 1.0) if st.warp else 1.0
        aspect = spec.organ_aspect.get(owner, (1.0, 1.0, 1.0)) if st.warp else (1.0, 1.0, 1.0)
        centre = centres.get(owner, np.zeros(3, np.float32))
        shapes = tuple(_scaled(sh, spec, centre if owner in centres else _centre(sh), shift, scale, aspect)
                       for sh in st.shapes)
        air = st.air_above_y
        if air is not None:
            air = air * float(spec.body_scale()[1]) + float(shift[1])
        out.append(replace(st, shapes=shapes, air_above_y=air))
    return out


def _centre(shape) -> np.ndarray:
    if isinstance(shape, Ellipsoid):
        return np.asarray(shape.center, np.float32)
    return np.asarray(shape.points, np.float32).mean(axis=0)


def expected_labels(spec: CaseSpec) -> list[int]:
    """Labels of the organs whose centre lies well inside the scanned z-range: every such organ must
    appear in the case (organs cut by the scan's ends may appear too)."""
    present = set()
    for st in build_structures(spec):
        lo, hi = _z_extent(st)
        if st.label and st.name == st.organ and spec.z_bottom + 20 < (lo + hi) / 2 < spec.z_top - 20:
            present.add(st.label)
    return sorted(present)


def _z_extent(st: Structure) -> tuple[float, float]:
    bounds = [sh.bounds(0.0) for sh in st.shapes]
    return min(b[0][0] for b in bounds), max(b[1][0] for b in bounds)
