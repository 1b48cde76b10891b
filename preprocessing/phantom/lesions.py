"""Incidental lesions of the default phantom: what abdominal CTs of adults commonly show by the way.

Each case draws each kind independently (`INCIDENTAL_PREVALENCE`) from its own stream
(`CaseSpec.lesion_seed`); organ-bound lesions keep their organ's label, as AMOS's annotators
included them in the organ. Prevalences:

- simple liver cysts ~18 % and renal cysts ~41 % of adults at spiral CT (Carrim ZI, Murchison JT,
  "The prevalence of simple renal and hepatic cysts detected by spiral computed tomography",
  Clin Radiol 2003;58:626-9); taken lower here (18 %, 30 %) for a younger mixed population;
- hypodense solid liver lesions (metastases, haemangiomas) in ~8 % of an oncological CT
  population's livers;
- abdominal aortic calcification, common in adults and rising with age (Framingham: Kauppila LI
  et al., Atherosclerosis 1997;132:245-50); 35 % here, for a population without drawn ages.

The painters are findings.py's (the same shapes); under `--findings` these are off and the
findings alone add lesions.
"""
from __future__ import annotations

import numpy as np

from ..labels import AMOS_LABELS
from .anatomy import CaseSpec, Structure, build_structures
from .findings import _calcifications, _liver_lesions, _point_in, _renal_cysts
from .shapes import Ellipsoid

INCIDENTAL_PREVALENCE = {"liver cyst": 0.18, "liver lesion": 0.08, "renal cyst": 0.30, "aortic calcification": 0.35}


def _liver_cysts(spec, organs, rng):
    lobe = organs["liver"].shapes[0]
    shapes = tuple(Ellipsoid(_point_in(lobe, rng, 0.6), (float(rng.uniform(4, 15)),) * 3)
                   for _ in range(rng.integers(1, 4)))
    return [Structure("liver cyst", "cyst", AMOS_LABELS["liver"], shapes, only_over=("liver",),
                      below_diaphragm=True, owner="liver")]


PAINTERS = {"liver cyst": _liver_cysts, "liver lesion": _liver_lesions, "renal cyst": _renal_cysts,
            "aortic calcification": _calcifications}


def draw_incidental(spec: CaseSpec) -> dict[str, bool]:
    """Which incidental lesions the case has."""
    u = np.random.default_rng(spec.lesion_seed).random(len(INCIDENTAL_PREVALENCE))
    return {name: bool(v < p) for (name, p), v in zip(INCIDENTAL_PREVALENCE.items(), u)}


def incidental_structures(spec: CaseSpec) -> list[Structure]:
    """The case's incidental lesions as structures painted after its anatomy."""
    present = draw_incidental(spec)
    if not any(present.values()):
        return []
    organs = {st.name: st for st in build_structures(spec)}
    seq = np.random.SeedSequence([spec.lesion_seed, 1]).spawn(len(PAINTERS))
    out = []
    for (name, painter), child in zip(PAINTERS.items(), seq):
        if present[name]:
            out.extend(painter(spec, organs, np.random.default_rng(child)))
    return out
