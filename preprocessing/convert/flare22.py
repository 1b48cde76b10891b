"""FLARE22 labelled cases: `images/FLARE22_Tr_0001_0000.nii.gz` and `labels/FLARE22_Tr_0001.nii.gz`.

FLARE22's 13 organs are all AMOS organs and fill AMOS ids 1..13 exactly, so labels are remapped to
AMOS's ids and names. Images without a label become test images (`imagesTs`); FLARE22's ~2000
unlabelled images are a collection for `medgmae_plan_and_preprocess --images`.
"""
from __future__ import annotations

from pathlib import Path

from preprocessing.labels import AMOS_LABELS

from .common import CaseSpec, Conversion, find_folder, nifti_files, refuse_orphan_labels, strip_nifti

DATASET_ID = 22
DATASET_NAME = "FLARE22"
SOURCE_LABELS = {1: "liver", 2: "right kidney", 3: "spleen", 4: "pancreas", 5: "aorta", 6: "postcava",
                 7: "right adrenal gland", 8: "left adrenal gland", 9: "gall bladder", 10: "esophagus",
                 11: "stomach", 12: "duodenum", 13: "left kidney"}
LABEL_MAP = {src: AMOS_LABELS[name] for src, name in SOURCE_LABELS.items()}
LABELS = {name: i for name, i in AMOS_LABELS.items() if i <= len(SOURCE_LABELS)}


def find(source: Path) -> Conversion:
    images = find_folder(source, "images")
    labels = images.parent / "labels"
    train, test, notes = [], [], []
    for image in nifti_files(images):
        case_id = strip_nifti(image.name).removesuffix("_0000")
        label = labels / f"{case_id}.nii.gz"
        (train if label.is_file() else test).append(CaseSpec(case_id, image, label if label.is_file() else None))
    refuse_orphan_labels(labels, train)
    notes.append(f"{len(train)} labelled cases, {len(test)} images without labels (written to imagesTs)")
    return Conversion(DATASET_NAME, LABELS, train, test, LABEL_MAP, notes,
                      reference="FLARE22, https://flare22.grand-challenge.org")
