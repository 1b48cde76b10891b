"""AMOS22 task 1 (CT): `imagesTr/amos_0001.nii.gz`, `labelsTr/`, `imagesVa/`, `labelsVa/`, `imagesTs/`.

Only CT cases (ids <= 500; larger ids are MRI) are kept. Training and validation cases with labels
both become nnU-Net training cases; `imagesTs` becomes `imagesTs`. The label ids are read from the
download's `dataset.json` and matched to AMOS's 15 organs by name (it spells aorta "arota" in some
copies); without a `dataset.json` the documented ids are assumed, and the note says so.
"""
from __future__ import annotations

import json
from pathlib import Path

from preprocessing.labels import AMOS_LABELS

from medgmae_plans.runtime import UserError
from .common import CaseSpec, Conversion, case_number, find_folder, nifti_files, refuse_orphan_labels, strip_nifti

DATASET_ID = 218
DATASET_NAME = "AMOS2022_postChallenge_task1"
MAX_CT_ID = 500
SPELLINGS = {"arota": "aorta", "gallbladder": "gall bladder", "inferior vena cava": "postcava", "ivc": "postcava",
             "prostate or uterus": "prostate/uterus", "prostate/uterus": "prostate/uterus"}


def _canonical(name: str) -> str:
    key = " ".join(str(name).strip().lower().replace("_", " ").split())
    return SPELLINGS.get(key, key)


def label_map_from_json(meta_file: Path, notes: list[str]) -> dict[int, int]:
    if not meta_file.is_file():
        notes.append(f"{meta_file} not found; assumed AMOS's documented label ids")
        return {i: i for i in AMOS_LABELS.values() if i}
    try:
        labels = json.loads(meta_file.read_text())["labels"]
    except (ValueError, KeyError):
        raise UserError(f"{meta_file}: no readable 'labels' entry") from None
    mapping = {}
    for src, name in labels.items():
        canonical = _canonical(name)
        if canonical not in AMOS_LABELS:
            raise UserError(f"{meta_file}: label {src} {name!r} is not one of AMOS's organs")
        if int(src):
            mapping[int(src)] = AMOS_LABELS[canonical]
    if sorted(mapping.items()) != [(i, i) for i in range(1, len(AMOS_LABELS))]:
        notes.append(f"{meta_file}: label ids differ from the documented ones; remapped by name: {mapping}")
    return mapping


def _cases(images: Path, labels: Path | None, notes: list[str]) -> list[CaseSpec]:
    cases = []
    for image in nifti_files(images, "amos_"):
        number = int(case_number(image.name))
        if number > MAX_CT_ID:
            continue
        case_id = strip_nifti(image.name)
        label = labels / image.name if labels is not None else None
        if labels is not None and not label.is_file():
            notes.append(f"{image}: no label in {labels}; skipped")
            continue
        cases.append(CaseSpec(case_id, image, label))
    return cases


def find(source: Path) -> Conversion:
    notes: list[str] = []
    root = find_folder(source, "imagesTr").parent
    mapping = label_map_from_json(root / "dataset.json", notes)
    train = _cases(root / "imagesTr", root / "labelsTr", notes)
    if (root / "imagesVa").is_dir():
        train += _cases(root / "imagesVa", root / "labelsVa", notes)
    test = _cases(root / "imagesTs", None, notes) if (root / "imagesTs").is_dir() else []
    for labels in ("labelsTr", "labelsVa"):  # MRI labels (ids > 500) are left out on purpose
        refuse_orphan_labels(root / labels, train, kept=lambda p: int(case_number(p.name)) > MAX_CT_ID)
    notes.append(f"{len(train)} labelled CT cases (ids <= {MAX_CT_ID}), {len(test)} test CT cases")
    return Conversion(DATASET_NAME, dict(AMOS_LABELS), train, test, mapping, notes,
                      reference="AMOS22, https://amos22.grand-challenge.org")
