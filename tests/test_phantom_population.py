"""The phantom's population (generator version 3): phases and their HU, bodies, organ sizes, no overlaps."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from preprocessing.labels import AMOS_LABELS
from preprocessing.phantom import case_spec
from preprocessing.phantom.anatomy import (NEUTRAL_MODES, REFERENCE_CAVITY_DEPTH, REFERENCE_CAVITY_WIDTH, SKIN_MM,
                                           CaseSpec, expected_labels)
from preprocessing.phantom.phases import HU_BY_PHASE, PHASE_MIX, PHASES, SCANNER_OFFSET_HU
from preprocessing.phantom.population import MODEL_VOLUME_ML, model_volume
from preprocessing.phantom.render import render_case

SPECS = [case_spec(0, "train", i)[0] for i in range(400)]


def test_phase_mix_follows_the_clinical_mix():
    counts = Counter(s.phase for s in SPECS)
    for phase, share in zip(PHASES, PHASE_MIX):
        assert abs(counts[phase] / len(SPECS) - share) < 0.06, (phase, counts)


def test_every_tissue_hu_lies_in_its_phase_range():
    for s in SPECS:
        assert abs(s.hu_offset) <= SCANNER_OFFSET_HU
        for tissue, ranges in HU_BY_PHASE.items():
            lo, hi = ranges[s.phase]
            assert lo <= s.hu[tissue] <= hi, (s.phase, tissue, s.hu[tissue])


def test_bodies_range_from_thin_to_obese_and_organs_follow_body_size():
    fat = np.array([s.fat_mm for s in SPECS])
    bmi = np.array([s.patient["bmi"] for s in SPECS])
    assert fat.min() >= 5 and fat.max() <= 60 and fat.min() < 10 and fat.max() > 45
    assert np.corrcoef(bmi, fat)[0, 1] > 0.6
    bsa = np.array([s.patient["bsa"] for s in SPECS])
    liver = np.array([s.patient["volumes_ml"]["liver"] for s in SPECS])
    assert np.corrcoef(bsa, liver)[0, 1] > 0.3
    female = np.array([s.female for s in SPECS])
    assert 1000 < np.median(liver[female]) < np.median(liver[~female]) < 2200  # ICRP 89: 1330 / 1710 ml
    assert {s.pelvis for s in SPECS} == {True, False}
    assert any(s.z_top < s.breath_mm for s in SPECS)  # some scans cut the liver dome
    assert len({round(s.breath_mm) for s in SPECS}) > 20 and max(abs(s.breath_mm) for s in SPECS) <= 30


def _first_of_each_phase(n_per_phase: int = 2) -> list[int]:
    picks: dict[str, list[int]] = {p: [] for p in PHASES}
    for i, s in enumerate(SPECS):
        if len(picks[s.phase]) < n_per_phase:
            picks[s.phase].append(i)
    return sorted(i for v in picks.values() for i in v)


@pytest.fixture(scope="module")
def rendered():
    """Two cases of each phase at 3x the spacing (quick), with their specs."""
    out = []
    for i in _first_of_each_phase():
        spec, noise_seed = case_spec(0, "train", i, spacing_scale=3.0)
        out.append((spec, render_case(spec, noise_seed)))
    return out


@pytest.mark.parametrize("organ,tissue", [("liver", "liver"), ("spleen", "spleen"), ("aorta", "aortic blood")])
def test_rendered_organ_medians_lie_in_their_phase_range(rendered, organ, tissue):
    margin = SCANNER_OFFSET_HU + 15  # offset, plus noise, lesions and partial volume at 3x spacing
    for spec, case in rendered:
        inside = case.hu[case.label == AMOS_LABELS[organ]]
        if inside.size < 50:
            continue
        lo, hi = HU_BY_PHASE[tissue][spec.phase]
        assert lo - margin <= np.median(inside) <= hi + margin, (spec.phase, organ, np.median(inside))


def test_kidney_medians_follow_the_phase(rendered):
    for spec, case in rendered:
        inside = case.hu[np.isin(case.label, [AMOS_LABELS["right kidney"], AMOS_LABELS["left kidney"]])]
        if inside.size < 50:
            continue
        cortex, medulla = HU_BY_PHASE["renal cortex"][spec.phase], HU_BY_PHASE["renal medulla"][spec.phase]
        lo, hi = min(cortex[0], medulla[0]) - 25, max(cortex[1], medulla[1]) + 25
        assert lo <= np.median(inside) <= hi, (spec.phase, np.median(inside))


def test_organs_do_not_overlap_and_touch_only_at_their_surfaces(rendered):
    """Each organ's shape loses little to the organs painted before it (they are moulded against each
    other at their contact surfaces, never painted into each other)."""
    for spec, case in rendered:
        for label, (blocked, wanted) in case.blocked.items():
            if wanted > 200:
                assert blocked / wanted < 0.3, (spec.phase, label, blocked / wanted)


def test_every_organ_the_coverage_includes_is_present(rendered):
    for spec, case in rendered:
        present = set(np.unique(case.label).tolist()) - {0}
        assert set(expected_labels(spec)) <= present


def test_model_volumes_match_the_reference_anatomy():
    """MODEL_VOLUME_ML is the anatomy's organ volumes at size 1 and neutral modes (re-measure it when
    the reference shapes change)."""
    wall = SKIN_MM + 20 + 10
    spec = CaseSpec(spacing=(2.0, 2.0, 2.0), flips=(False,) * 3, half_width=REFERENCE_CAVITY_WIDTH + wall,
                    half_depth=REFERENCE_CAVITY_DEPTH + wall, fat_mm=20, muscle_mm=10, height_scale=1.0,
                    z_top=60, z_bottom=-400, modes=NEUTRAL_MODES, incidental=False)
    case = render_case(spec, 0)
    for organ in MODEL_VOLUME_ML:
        volume = (case.label == AMOS_LABELS[organ]).sum() * 8.0 / 1000
        assert abs(volume / model_volume(organ, False) - 1) < 0.2, (organ, volume)
