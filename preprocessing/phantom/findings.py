"""Findings for the phantom: per-case yes/no abnormalities for the classification task.

Each finding is drawn independently with probability `prevalence` from its own random stream
(seed, kind, index), so the labels are independent of each other and of the anatomy. A present
finding adds structures painted after the normal anatomy (or, for splenomegaly, enlarges an
organ), at sizes a radiologist would see on a CT at 1.5-3 mm:

    pleural effusion         dependent fluid (12 HU) in one or both posterior lung bases
    liver lesion             1-3 hypodense masses (30-60 HU below the liver in its phase), 9-18 mm radius
    renal cyst               1-2 water-density (5 HU) spheres in a kidney, 8-14 mm radius
    vascular calcification   4-7 plaques (650 HU) on the aortic wall, 3-5 mm radius
    splenomegaly             the spleen enlarged 1.35-1.55x in every direction
    ascites                  fluid (8 HU) replacing the anterior peritoneal fat
    lung nodule              1-3 solid (35 HU) spheres in the lung bases, 5-9 mm radius
    emphysema                4-7 low-attenuation (-975 HU against -850 HU lung) zones, 9-16 mm radius

Cases with findings carry no incidental lesions (lesions.py), so the 0/1 labels stay exact.
Organ-bound findings are painted only over their organ's tissue (`Structure.only_over`), deform
with it (`Structure.owner`) and keep its label, so the segmentation labels stay correct; the others are label 0.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..labels import AMOS_LABELS
from .anatomy import CaseSpec, Structure, build_structures, diaphragm_z, lung_floor
from .shapes import Ellipsoid, Tube

FINDINGS: tuple[str, ...] = ("pleural effusion", "liver lesion", "renal cyst", "vascular calcification",
                             "splenomegaly", "ascites", "lung nodule", "emphysema")
DEFAULT_PREVALENCE = 0.4
_FINDINGS_CODE = 7  # separates the findings' random stream from the case's own (seed, kind, index) streams


def draw_findings(seed: int, kind_code: int, index: int, prevalence: float) -> tuple[dict[str, bool], int]:
    """Which findings case `index` has ({name: bool}, each Bernoulli(prevalence)) and a seed for their geometry."""
    seq = np.random.SeedSequence([seed, kind_code, index, _FINDINGS_CODE])
    labels_seq, geometry_seq = seq.spawn(2)
    draws = np.random.default_rng(labels_seq).random(len(FINDINGS))
    return ({name: bool(u < prevalence) for name, u in zip(FINDINGS, draws)},
            int(geometry_seq.generate_state(1)[0]))


def apply_findings(spec: CaseSpec, present: dict[str, bool], geometry_seed: int) -> tuple[CaseSpec, list[Structure]]:
    """The case's spec (with an enlarged spleen under splenomegaly) and the extra structures to paint."""
    rng = np.random.default_rng(geometry_seed)
    # no incidental lesions under findings: a case's lesions are exactly its labelled findings
    spec = replace(spec, incidental=False)
    if present.get("splenomegaly"):
        scale = dict(spec.organ_scale)
        scale["spleen"] = scale.get("spleen", 1.0) * float(rng.uniform(1.35, 1.55))
        spec = replace(spec, organ_scale=scale)
    organs = {st.name: st for st in build_structures(spec)}
    painters = {"pleural effusion": _effusion, "liver lesion": _liver_lesions, "renal cyst": _renal_cysts,
                "vascular calcification": _calcifications, "ascites": _ascites, "lung nodule": _nodules,
                "emphysema": _emphysema}
    extra = []
    for name in FINDINGS:
        # Every finding consumes its own child stream, so adding one never moves another's geometry.
        child = np.random.default_rng(rng.integers(2**63))
        if present.get(name) and name in painters:
            extra.extend(painters[name](spec, organs, child))
    return spec, extra


def _body_scale(spec: CaseSpec) -> tuple[float, float]:
    _, sy, sx = spec.body_scale()
    return float(sy), float(sx)


def _point_in(ell: Ellipsoid, rng: np.random.Generator, reach: float) -> tuple[float, float, float]:
    """A random point inside `ell`, within `reach` of its radii (so a small sphere there stays inside)."""
    u = rng.normal(size=3)
    u *= rng.uniform(0, 1) ** (1 / 3) / np.linalg.norm(u)
    local = u * np.asarray(ell.radii) * reach
    return tuple(float(v) for v in np.asarray(ell.center) + ell.rotation @ local)


def _liver_lesions(spec, organs, rng):
    lobe = organs["liver"].shapes[0]  # the right lobe, the bulk of the liver
    shapes = tuple(Ellipsoid(_point_in(lobe, rng, 0.55), tuple(rng.uniform(9, 18) * rng.uniform(0.8, 1.2, 3)))
                   for _ in range(rng.integers(1, 4)))
    return [Structure("liver lesion", "liver lesion", AMOS_LABELS["liver"], shapes, only_over=("liver",),
                      below_diaphragm=True, owner="liver")]


def _renal_cysts(spec, organs, rng):
    side = "right kidney" if rng.random() < 0.5 else "left kidney"
    kidney = organs[side].shapes[0]
    shapes = tuple(Ellipsoid(_point_in(kidney, rng, 0.5), (float(rng.uniform(8, 14)),) * 3)
                   for _ in range(rng.integers(1, 3)))
    return [Structure("renal cyst", "cyst", AMOS_LABELS[side], shapes,
                      only_over=("renal cortex", "renal medulla"), below_diaphragm=True, owner=side)]


def _calcifications(spec, organs, rng):
    """Plaques centred on the wall of the abdominal aorta, within the scanned z-range."""
    trunk: Tube = organs["aorta"].shapes[0]
    (a, b, ra, rb), = list(trunk.segments())
    lo, hi = max(spec.z_bottom + 15, min(a[0], b[0])), min(spec.z_top - 15, max(a[0], b[0]))
    shapes = []
    for _ in range(rng.integers(4, 8)):
        z = rng.uniform(lo, hi) if hi > lo else 0.5 * (a[0] + b[0])
        t = (z - a[0]) / (b[0] - a[0])
        axis = a + t * (b - a)
        angle = rng.uniform(0, 2 * np.pi)
        rim = (ra + t * (rb - ra)) * 0.95
        centre = (float(z), float(axis[1] + rim * np.sin(angle)), float(axis[2] + rim * np.cos(angle)))
        shapes.append(Ellipsoid(centre, (float(rng.uniform(4, 7)),) + (float(rng.uniform(3, 5)),) * 2))
    return [Structure("aortic calcification", "calcification", 0, tuple(shapes),
                      only_over=("aortic blood", "visceral fat", "muscle"), warp=False)]


def _effusion(spec, organs, rng):
    sy, sx = _body_scale(spec)
    sides = [(-1,), (1,), (-1, 1)][rng.integers(3)]
    shapes = tuple(Ellipsoid((-15.0 * spec.height_scale + spec.breath_mm, 75.0 * sy, s * 70.0 * sx),
                             tuple(float(v) for v in rng.uniform(0.9, 1.2) * np.array([45.0, 38.0, 60.0])))
                   for s in sides)
    return [Structure("pleural effusion", "pleural fluid", 0, shapes, only_over=("lung",), warp=False)]


def _ascites(spec, organs, rng):
    sy, sx = _body_scale(spec)
    k = rng.uniform(0.9, 1.1)
    centre = (-150.0 * spec.height_scale, -60.0 * sy, 0.0)
    radii = (150.0 * spec.height_scale * k, 70.0 * sy * k, 150.0 * sx * k)
    return [Structure("ascites", "ascitic fluid", 0, (Ellipsoid(centre, radii),),
                      only_over=("visceral fat",), below_diaphragm=True, warp=False)]


def _lung_points(spec: CaseSpec, rng: np.random.Generator, n: int, margin: float) -> list[tuple[float, float, float]]:
    """Points in the lung bases: above the diaphragm by `margin`, below the scan's top, inside the cavity."""
    sy, sx = _body_scale(spec)
    points = []
    for _ in range(200):
        y, x = rng.uniform(-50, 85) * sy, rng.choice([-1, 1]) * rng.uniform(35, 110) * sx
        floor = float(max(diaphragm_z(spec, y, x), lung_floor(spec))) + margin
        if floor < spec.z_top - margin:
            points.append((float(rng.uniform(floor, spec.z_top - margin)), float(y), float(x)))
        if len(points) == n:
            break
    return points


def _nodules(spec, organs, rng):
    shapes = tuple(Ellipsoid(p, (float(rng.uniform(5, 9)),) * 3) for p in _lung_points(spec, rng, rng.integers(1, 4), 8))
    return [Structure("lung nodule", "nodule", 0, shapes, only_over=("lung",), warp=False)] if shapes else []


def _emphysema(spec, organs, rng):
    shapes = tuple(Ellipsoid(p, tuple(float(v) for v in rng.uniform(9, 16, 3)))
                   for p in _lung_points(spec, rng, rng.integers(4, 8), 5))
    return [Structure("emphysema", "emphysema", 0, shapes, only_over=("lung",), warp=False)] if shapes else []
