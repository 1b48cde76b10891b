"""Draw one case of the phantom's population: the patient, the organs, the breath hold, the scan.

Each property comes from a published figure (adults):

- Sex 1:1; height N(176, 7) cm for men, N(163, 6.5) cm for women; BMI log-normal with median
  26 kg/m^2, clipped to 17-45 (the spread of adult abdominal-CT populations; WHO classes thin to
  obese class III). Body surface area by Mosteller: sqrt(height_cm * weight_kg / 3600).
- Organ volumes: ICRP Publication 89, "Basic anatomical and physiological data for use in
  radiological protection: reference values" (2002), reference adult masses (men/women) liver
  1800/1400 g, spleen 150/130 g, kidneys 310/275 g (both), pancreas 140/120 g, adrenals 14/13 g
  (both), gall bladder contents 58/48 g, stomach wall 150/140 g, prostate 17 g, uterus 80 g; at
  ~1.04-1.05 g/ml. Volumes scale with body surface area (liver: Urata K et al., "Calculation of
  child and adult standard liver volume for liver transplantation", Hepatology 1995;21:1317-21,
  standard liver volume = 706 * BSA + 2.4 ml) with a residual spread of CT volumetry (liver CV
  ~15 %; spleen 215 ml, range 107-314 ml, Prassopoulos P et al., "Determination of normal splenic
  volume on computed tomography in relation to age, gender and body habitus", Eur Radiol
  1997;7:246-8; kidney length 11.2 +- 1.0 cm, Emamian SA et al., AJR 1993;160:83-6).
- Body composition: subcutaneous fat 5-60 mm at the abdominal wall and visceral fat that rise
  with BMI, women storing more subcutaneously and men more viscerally (Kvist H et al., "Total and
  visceral adipose-tissue volumes derived from measurements with computed tomography in adult men
  and women", Am J Clin Nutr 1988;48:1351-61).
- Breath hold: the liver moves 1-2.5 cm and the kidneys about two thirds of that cranio-caudally
  with breathing (review: Langen KM, Jones DT, "Organ motion and its management", IJROBP
  2001;50:265-78), and breath holds reproduce the diaphragm's position only within part of that;
  the dome's shift here is N(0, 12 mm) bounded to the issue's +-3 cm.
- Scan: in-plane spacing 0.6-1.0 mm, slices 1-5 mm, noise and kernel sharpness per case; coverage
  from the lung bases (or a top that cuts the liver dome) to below the kidneys or through the pelvis.
"""
from __future__ import annotations

import numpy as np

from .anatomy import CaseSpec, SKIN_MM
from .phases import TEXTURE_BY_PHASE, draw_hu, draw_phase

# ICRP 89 reference volumes (ml) per organ (men, women); one kidney / adrenal each.
ICRP_VOLUME_ML = {"liver": (1710, 1330), "spleen": (144, 125), "right kidney": (148, 131),
                  "left kidney": (148, 131), "pancreas": (133, 114), "right adrenal gland": (6.7, 6.2),
                  "left adrenal gland": (6.7, 6.2), "gall bladder": (56, 46), "stomach": (300, 260),
                  "prostate/uterus": (16, 76), "bladder": (200, 200)}
# Residual log-sd of each organ's volume at a given body size (CT volumetry spread; the gall bladder,
# stomach and bladder by how full they are).
VOLUME_LOG_SD = {"liver": 0.15, "spleen": 0.35, "right kidney": 0.15, "left kidney": 0.15, "pancreas": 0.25,
                 "right adrenal gland": 0.2, "left adrenal gland": 0.2, "gall bladder": 0.45, "stomach": 0.3,
                 "prostate/uterus": 0.25, "bladder": 0.5}
# Exponent of the body-surface-area ratio (Urata: liver volume about proportional to BSA).
VOLUME_BSA_POWER = {"liver": 1.0, "spleen": 0.8, "right kidney": 0.8, "left kidney": 0.8, "pancreas": 0.7}
REFERENCE_BSA = (1.90, 1.66)  # ICRP 89 reference man and woman, m^2
# Volume (ml) of each organ as anatomy.py draws it at size factor 1, neutral modes and the reference
# body (men, women: only the prostate/uterus differs), measured by rendering at 1.5 mm
# (tests/test_phantom_population.py checks them); the size factor is the cube root of drawn / this.
MODEL_VOLUME_ML = {"liver": 2053, "spleen": 109, "right kidney": 181, "left kidney": 165, "pancreas": 61,
                   "right adrenal gland": 4.4, "left adrenal gland": 4.0, "gall bladder": 44.5, "stomach": 434,
                   "prostate/uterus": (18.8, 63.7), "bladder": 237}
OTHER_ORGANS = ("duodenum", "esophagus")  # not sized from ICRP: jitter only
COVERAGE_CUT_SHARE = 0.15  # share of scans whose top cuts the liver dome; as many end above the kidneys' lower poles


def model_volume(organ: str, female: bool) -> float:
    v = MODEL_VOLUME_ML[organ]
    return float(v[int(female)] if isinstance(v, tuple) else v)


def body(rng: np.random.Generator) -> dict:
    """Sex, height, weight, BMI, BSA and the wall: subcutaneous fat, muscle and the cavity's size."""
    female = bool(rng.random() < 0.5)
    height = float(rng.normal(163, 6.5) if female else rng.normal(176, 7))
    bmi = float(np.clip(26 * np.exp(rng.normal(0, 0.18)), 17, 45))
    weight = bmi * (height / 100) ** 2
    fat = float(np.clip(5 + (bmi - 18) * (2.2 if female else 1.5) * np.exp(rng.normal(0, 0.25)), 5, 60))
    visceral = float(np.clip((bmi - 19) * (1.2 if female else 2.2) * np.exp(rng.normal(0, 0.3)), 0, 55))
    muscle = float(rng.uniform(7, 11) if female else rng.uniform(9, 14))
    frame = height / 170.0
    cavity_x = 118 * frame * np.exp(rng.normal(0, 0.04)) + 0.5 * visceral
    cavity_y = 78 * frame * np.exp(rng.normal(0, 0.05)) + visceral
    wall = SKIN_MM + fat + muscle
    return {"female": female, "height_cm": height, "weight_kg": weight, "bmi": bmi,
            "bsa": float(np.sqrt(height * weight / 3600)), "fat_mm": fat, "visceral_mm": visceral,
            "muscle_mm": muscle, "half_width": float(cavity_x + wall), "half_depth": float(cavity_y + wall)}


def organ_volumes(person: dict, rng: np.random.Generator) -> dict[str, float]:
    """Each sized organ's volume (ml): ICRP 89 by sex, times (BSA / reference BSA)^power, times a log-normal."""
    sex = 1 if person["female"] else 0
    out = {}
    for organ, ref in ICRP_VOLUME_ML.items():
        size = (person["bsa"] / REFERENCE_BSA[sex]) ** VOLUME_BSA_POWER.get(organ, 0.5)
        out[organ] = float(ref[sex] * size * np.exp(rng.normal(0, VOLUME_LOG_SD[organ])))
    return out


def shape_modes(rng: np.random.Generator, female: bool) -> dict[str, float]:
    """Organ-specific shape modes (anatomy.py reads them): the liver's left-lobe size, dome, inferior
    right lobe and Riedel lobe (in ~15 % of people, more women); the spleen's crescent spread and
    length; how much lower the right kidney lies (1-2 cm on average), each hilum's rotation, the
    kidneys' tilt; how full the stomach is."""
    riedel_p = 0.2 if female else 0.1
    return {"left_lobe": float(rng.uniform(0.55, 1.5)), "liver_dome": float(rng.uniform(0.85, 1.15)),
            "inferior_right": float(rng.uniform(0.7, 1.3)),
            "riedel": float(rng.uniform(0.6, 1.2)) if rng.random() < riedel_p else 0.0,
            "spleen_arc": float(rng.uniform(10, 32)), "spleen_length": float(rng.uniform(0.8, 1.25)),
            "kidney_drop": float(rng.normal(13, 8)), "hilum_right": float(rng.normal(30, 12)),
            "hilum_left": float(rng.normal(30, 12)), "kidney_tilt": float(rng.normal(0, 8)),
            "stomach_fill": float(rng.uniform(0.75, 1.3))}


def _aspect(rng: np.random.Generator, sd: float) -> tuple[float, float, float]:
    """A (z, y, x) stretch with product 1: the organ's proportions, independent of its volume."""
    a = np.exp(rng.normal(0, sd, 3))
    return tuple(float(v) for v in a / np.cbrt(a.prod()))


def coverage(rng: np.random.Generator, height: float, breath: float) -> tuple[float, float]:
    """(z_top, z_bottom): from the lung bases, or (sometimes) a top that cuts the liver dome, to below
    the kidneys, sometimes cutting their lower poles, or through the pelvis (35 %)."""
    u = rng.random()
    z_top = breath + (rng.uniform(-40, -10) if u < COVERAGE_CUT_SHARE else rng.uniform(20, 60)) * height
    pelvis = rng.random() < 0.35
    if pelvis:
        z_bottom = -rng.uniform(375, 400)
    elif rng.random() < COVERAGE_CUT_SHARE:
        z_bottom = -rng.uniform(150, 180)
    else:
        z_bottom = -rng.uniform(190, 240)
    return float(z_top), float(z_bottom * height)


def sample_case(rng: np.random.Generator) -> CaseSpec:
    """Draw a case: the patient, organ sizes and shapes, breath hold, contrast phase and the scan.
    `spec.patient` describes the patient (for phantom_cases.json and the population table)."""
    person = body(rng)
    volumes = organ_volumes(person, rng)
    modes = shape_modes(rng, person["female"])
    phase = draw_phase(rng)
    hu, offset = draw_hu(phase, rng)
    height = float(np.clip(person["height_cm"] / 172.0, 0.9, 1.1))
    breath = float(np.clip(rng.normal(0, 12), -30, 30))
    z_top, z_bottom = coverage(rng, height, breath)
    sized = list(ICRP_VOLUME_ML) + list(OTHER_ORGANS)
    scale = {o: float(np.cbrt(volumes[o] / model_volume(o, person["female"]))) if o in volumes
             else float(rng.uniform(0.9, 1.1)) for o in sized}
    spec = CaseSpec(
        spacing=(round(float(rng.uniform(1.0, 5.0)), 2),) + (round(float(rng.uniform(0.6, 1.0)), 3),) * 2,
        flips=(bool(rng.random() < 0.3),) + (bool(rng.random() < 0.2),) * 2,
        half_width=person["half_width"], half_depth=person["half_depth"], fat_mm=person["fat_mm"],
        muscle_mm=person["muscle_mm"], height_scale=height, z_top=z_top, z_bottom=z_bottom,
        phase=phase, hu=hu, hu_offset=offset,
        texture={t: v[phase] for t, v in TEXTURE_BY_PHASE.items() if phase in v},
        noise_hu=float(np.exp(rng.uniform(np.log(6), np.log(25)))),
        blur_mm=float(rng.uniform(0.3, 1.2)),
        breath_mm=breath,
        organ_shift={o: tuple(float(v) for v in rng.normal(0, 4.0, 3)) for o in sized},
        organ_scale=scale,
        organ_aspect={o: _aspect(rng, 0.12 if o == "liver" else 0.08) for o in sized},
        modes=modes,
        bowel_seed=int(rng.integers(2**31)), warp_seed=int(rng.integers(2**31)),
        lesion_seed=int(rng.integers(2**31)), female=person["female"],
        patient={**person, "volumes_ml": volumes})
    return spec
