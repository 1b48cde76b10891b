"""BTCV abdomen: `RawData/Training/img/img0001.nii.gz`, `RawData/Training/label/label0001.nii.gz`.

BTCV's organs 1-9 are AMOS's 1-9; pancreas (11) and the adrenal glands (12, 13) take AMOS's ids
10-12, and the portal and splenic veins (10), which AMOS does not label, take id 13 under their own
name, keeping the ids consecutive as nnU-Net requires. `RawData/Testing/img` becomes `imagesTs`.
"""
from __future__ import annotations

from pathlib import Path

from preprocessing.labels import AMOS_LABELS

from .common import CaseSpec, Conversion, case_number, find_folder, nifti_files, refuse_orphan_labels

DATASET_ID = 17
DATASET_NAME = "BTCV"
PORTAL_VEINS = "portal and splenic veins"
LABEL_MAP = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 13, 11: 10, 12: 11, 13: 12}
LABELS = {**{name: i for name, i in AMOS_LABELS.items() if i <= 12}, PORTAL_VEINS: 13}


def find(source: Path) -> Conversion:
    training = find_folder(source, "RawData/Training", "Training")
    notes: list[str] = []
    train = []
    for image in nifti_files(training / "img", "img"):
        number = case_number(image.name)
        label = training / "label" / f"label{number}.nii.gz"
        if not label.is_file():
            notes.append(f"{image}: no {label.name}; skipped")
            continue
        train.append(CaseSpec(f"btcv_{number}", image, label))
    refuse_orphan_labels(training / "label", train)
    testing = training.parent / "Testing" / "img"
    test = [CaseSpec(f"btcv_{case_number(p.name)}", p) for p in nifti_files(testing, "img")] if testing.is_dir() else []
    notes.append(f"{len(train)} labelled cases, {len(test)} test images")
    return Conversion(DATASET_NAME, LABELS, train, test, LABEL_MAP, notes,
                      reference="Multi-Atlas Labeling Beyond the Cranial Vault (BTCV), Synapse syn3193805")
