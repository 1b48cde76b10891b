"""From `-d` / `--images` names to the pool of pretraining cases, and the metadata fine-tuning reads.

The cases come from `preprocessing.collections` (labelled nnU-Net preprocessed datasets and
unlabelled collections, both at the spacing of one configuration of the MedGMAE plans and its
intensity window). The metadata gives that spacing, which fine-tuning checks.
"""
from __future__ import annotations

import json
from typing import Sequence

from medgmae_plans.configurations import DEFAULT_CONFIGURATION, PLANS_NAME
from medgmae_plans.constants import NORMALISATION
from medgmae_plans.runtime import UserError
from preprocessing.collections import CaseRef, check_cases, list_pretraining_cases, load_case, load_properties
from preprocessing.pretrain_sampling import PretrainCase

PLANS_FILE = f"{PLANS_NAME}.json"


class CaseLoader:
    """Picklable loader: (image [1, D, H, W], labels [1, D, H, W] or None, nnU-Net properties)."""

    def __init__(self, ref: CaseRef):
        self.ref = ref

    def __call__(self):
        image, seg = load_case(self.ref)
        return image, seg, load_properties(self.ref) if self.ref.labelled else {}


def _plans_spacing(ref: CaseRef, configuration: str) -> list[float]:
    plans_json = ref.folder.parent / PLANS_FILE
    try:
        return [float(v) for v in json.loads(plans_json.read_text())["configurations"][configuration]["spacing"]]
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{plans_json}: cannot read the {configuration} spacing ({err})") from None


def pretraining_cases(datasets: Sequence[str], image_collections: Sequence[str],
                      configuration: str = DEFAULT_CONFIGURATION) -> tuple[list[PretrainCase], dict]:
    """All cases of the named datasets and collections, and the data part of the checkpoint metadata."""
    refs = list_pretraining_cases(datasets, image_collections, configuration=configuration)
    check_cases(refs)
    sources = list(dict.fromkeys(r.source for r in refs))
    first = {r.source: r for r in reversed(refs)}
    spacings = {s: _plans_spacing(first[s], configuration) for s in sources}
    if len({tuple(v) for v in spacings.values()}) > 1:
        raise UserError(f"the sources were preprocessed at different spacings {spacings}; "
                        "pretraining mixes them only at one spacing")
    cases = [PretrainCase(f"{r.source}/{r.case_id}", CaseLoader(r)) for r in refs]
    metadata = {
        "datasets": [s for s in sources if first[s].labelled],
        "image_collections": [s for s in sources if not first[s].labelled],
        "spacing": next(iter(spacings.values())), "normalisation": dict(NORMALISATION), "num_cases": len(cases),
    }
    return cases, metadata
