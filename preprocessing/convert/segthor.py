"""SegTHOR: `train/Patient_01/Patient_01.nii.gz` + `GT.nii.gz`; `test/Patient_41.nii.gz` (or in a folder).

Four thoracic organs, ids kept (1 esophagus, 2 heart, 3 trachea, 4 aorta); esophagus and aorta
carry AMOS's names.
"""
from __future__ import annotations

from pathlib import Path

from medgmae_plans.runtime import UserError

from .common import CaseSpec, Conversion, strip_nifti

DATASET_ID = 55
DATASET_NAME = "SegTHOR"
LABELS = {"background": 0, "esophagus": 1, "heart": 2, "trachea": 3, "aorta": 4}


def _patients(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("Patient_"))


def find(source: Path) -> Conversion:
    source = Path(source)
    train_root = source / "train" if (source / "train").is_dir() else source
    patients = _patients(train_root) if train_root.is_dir() else []
    if not patients:
        raise UserError(f"{source}: expected train/Patient_XX/ folders (SegTHOR's published layout)")
    notes: list[str] = []
    train = []
    for patient in patients:
        image, label = patient / f"{patient.name}.nii.gz", patient / "GT.nii.gz"
        if label.is_file() and not image.is_file():
            raise UserError(f"{label}: a label map whose image {image.name} is missing; restore the image or "
                            "remove the label")
        if not label.is_file():
            notes.append(f"{patient}: no GT.nii.gz; skipped")
            continue
        train.append(CaseSpec(patient.name, image, label))
    test = []
    test_root = source / "test"
    if test_root.is_dir():
        for entry in sorted(test_root.iterdir()):
            image = entry / f"{entry.name}.nii.gz" if entry.is_dir() else entry
            if image.is_file() and image.name.startswith("Patient_") and image.name.endswith((".nii.gz", ".nii")):
                test.append(CaseSpec(strip_nifti(image.name), image))
    notes.append(f"{len(train)} labelled patients, {len(test)} test patients")
    return Conversion(DATASET_NAME, LABELS, train, test, None, notes,
                      reference="SegTHOR, https://competitions.codalab.org/competitions/21145")
