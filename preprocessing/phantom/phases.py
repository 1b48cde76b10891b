"""Contrast phases: which phase a case is scanned in, and each tissue's Hounsfield units in that phase.

A case draws one phase from the clinical mix `PHASE_MIX`, then each enhancing tissue's mean HU
uniformly from its range in `HU_BY_PHASE`, then one scanner offset (`SCANNER_OFFSET_HU`) added to
every tissue except air. Tissues that do not enhance keep their `anatomy.TISSUES` value (plus the
offset). Ranges are summarised from these sources (adult, 300-370 mgI/ml, ~1.5-2 ml/kg):

- Non-contrast liver 55-65 HU and spleen ~8-10 HU below it: Kodama Y et al., "Comparison of CT
  methods for determining the fat content of the liver", AJR 2007;188:1307-12; Boll DT, Merkle EM,
  "Diffuse liver disease: strategies for hepatic CT and MR imaging", RadioGraphics 2009;29:1591-1614.
- Unenhanced soft-tissue values and their inter-scanner spread (muscle 40-60, kidney 25-35, blood
  35-50, pancreas 35-45 HU; two vendors' scanners differ by up to ~10 HU): Lamba R et al., "CT
  Hounsfield numbers of soft tissues on unenhanced abdominal CT scans: variability between two
  different manufacturers' MDCT scanners", AJR 2014;203:1013-20.
- Aortic and hepatic enhancement by phase (arterial aorta 250-400 HU, portal-venous liver
  +50-60 HU over baseline, aorta 150-200 HU): Bae KT, "Intravenous contrast medium administration
  and scan timing at CT", Radiology 2010;256:32-61; Heiken JP et al., "Dynamic incremental CT:
  effect of volume and concentration of contrast material and patient weight on hepatic
  enhancement", Radiology 1995;195:353-7.
- Renal phases (corticomedullary cortex 150-200 HU with darker medulla, nephrographic kidney
  homogeneous, excretory collecting system opacified): Yuh BI, Cohan RH, "Different phases of renal
  enhancement: role in detecting and characterizing renal masses during helical CT", AJR
  1999;173:747-55.
- Pancreatic enhancement (peak 100-130 HU in the late arterial/pancreatic phase, 90-110 HU at
  portal-venous): Lu DSK et al., "Two-phase helical CT for pancreatic tumors: pancreatic versus
  hepatic phase enhancement", Radiology 1996;199:697-701.
- Arciform (heterogeneous) splenic enhancement in the arterial phase: Glazer GM et al., "Dynamic
  CT of the normal spleen", AJR 1981;137:343-6; Donnelly LF et al., "Heterogeneous splenic
  enhancement patterns on spiral CT images in children: minimizing misinterpretation", Radiology
  1999;210:493-7.
- Where a source gives an enhancement rather than an absolute value the range is the unenhanced
  value plus it. The rows for the adrenals, esophagus, gastric and bowel wall, prostate/uterus,
  hepatic venous blood and hypodense liver lesions, and most delayed-phase values, are estimates in
  line with these sources, not taken from one table.
- Phase mix: a clinical abdominal CT service scans mostly portal-venous, then non-contrast
  (renal colic, follow-up), multiphase arterial and delayed series; 25/15/50/10 % is the issue's
  working mix, not a measured one.
"""
from __future__ import annotations

import numpy as np

PHASES: tuple[str, ...] = ("non-contrast", "arterial", "portal-venous", "delayed")
PHASE_MIX: tuple[float, ...] = (0.25, 0.15, 0.50, 0.10)
SCANNER_OFFSET_HU = 10.0  # per-case offset drawn from [-10, +10] (Lamba et al. 2014)

# tissue -> phase -> (low, high) mean HU. Order of PHASES in each row.
_NC, _ART, _PV, _DEL = PHASES
HU_BY_PHASE: dict[str, dict[str, tuple[float, float]]] = {
    "liver": {_NC: (50, 65), _ART: (60, 80), _PV: (100, 130), _DEL: (80, 100)},
    "spleen": {_NC: (40, 50), _ART: (90, 130), _PV: (110, 130), _DEL: (80, 100)},
    "renal cortex": {_NC: (25, 35), _ART: (150, 200), _PV: (150, 180), _DEL: (110, 140)},
    "renal medulla": {_NC: (25, 35), _ART: (70, 100), _PV: (150, 180), _DEL: (120, 150)},
    "renal pelvis": {_NC: (5, 15), _ART: (5, 15), _PV: (10, 30), _DEL: (400, 900)},
    "aortic blood": {_NC: (35, 50), _ART: (250, 400), _PV: (150, 200), _DEL: (100, 130)},
    "caval blood": {_NC: (35, 50), _ART: (80, 130), _PV: (150, 180), _DEL: (100, 130)},
    "portal blood": {_NC: (35, 50), _ART: (100, 150), _PV: (150, 200), _DEL: (100, 130)},
    "hepatic venous blood": {_NC: (35, 50), _ART: (50, 80), _PV: (140, 180), _DEL: (100, 130)},
    "heart": {_NC: (35, 50), _ART: (250, 380), _PV: (140, 190), _DEL: (100, 130)},
    "pancreas": {_NC: (35, 45), _ART: (100, 130), _PV: (90, 110), _DEL: (70, 90)},
    "adrenal": {_NC: (25, 40), _ART: (60, 90), _PV: (60, 90), _DEL: (50, 70)},
    "gastric wall": {_NC: (35, 45), _ART: (80, 110), _PV: (80, 100), _DEL: (60, 80)},
    "duodenum": {_NC: (30, 40), _ART: (70, 100), _PV: (70, 90), _DEL: (55, 75)},
    "esophagus": {_NC: (35, 45), _ART: (60, 80), _PV: (70, 90), _DEL: (55, 75)},
    "bowel wall": {_NC: (30, 45), _ART: (70, 100), _PV: (70, 95), _DEL: (55, 75)},
    "prostate/uterus": {_NC: (35, 45), _ART: (60, 90), _PV: (70, 100), _DEL: (60, 80)},
    "muscle": {_NC: (40, 60), _ART: (45, 65), _PV: (50, 70), _DEL: (50, 65)},
    "urine": {_NC: (0, 15), _ART: (0, 15), _PV: (0, 20), _DEL: (150, 400)},
    # hypodense liver lesions (metastasis-like) stay 30-60 HU below the enhanced liver
    "liver lesion": {_NC: (25, 40), _ART: (35, 60), _PV: (50, 80), _DEL: (45, 70)},
}
# Texture amplitude (HU) by phase where it differs from anatomy.TISSUES: the arciform arterial spleen.
TEXTURE_BY_PHASE: dict[str, dict[str, float]] = {"spleen": {_ART: 30.0}}


def draw_phase(rng: np.random.Generator) -> str:
    return PHASES[int(rng.choice(len(PHASES), p=PHASE_MIX))]


def draw_hu(phase: str, rng: np.random.Generator) -> tuple[dict[str, float], float]:
    """Mean HU of every phase-dependent tissue in this case ({tissue: HU}) and the scanner offset."""
    hu = {tissue: float(rng.uniform(*ranges[phase])) for tissue, ranges in HU_BY_PHASE.items()}
    return hu, float(rng.uniform(-SCANNER_OFFSET_HU, SCANNER_OFFSET_HU))
