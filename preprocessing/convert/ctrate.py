"""CT-RATE's published layout -> a classification dataset folder (labels + sources; volumes stay in place).

Expected under SOURCE (the folder holding `dataset/`, or `dataset/` itself):

    train/<patient>/<scan>/<VolumeName>          e.g. train/train_1/train_1_a/train_1_a_1.nii.gz
    valid/<patient>/<scan>/<VolumeName>
    metadata/train_metadata.csv, metadata/validation_metadata.csv  (or valid_metadata.csv)
        VolumeName, XYSpacing ("[0.75, 0.75]"), ZSpacing, RescaleSlope, RescaleIntercept, ...
    multi_abnormality_labels/train_predicted_labels.csv, valid_predicted_labels.csv
        VolumeName + 18 binary columns

Writes `$nnUNet_raw/Dataset992_CTRATE/`: `classification_labels.csv` (case = VolumeName without
`.nii.gz`; split train/valid, the official split), `classification_sources.csv` (absolute image path,
slope, intercept, spacing from the metadata), `dataset.json`, `conversion.json`, `conversion.log`.
The volumes are not copied (CT-RATE is terabytes); preprocessing reads them where they are.

HU: the NIfTI volumes of CT-RATE's first release hold the stored DICOM values, and the metadata's
RescaleSlope/RescaleIntercept turn them into HU; later uploads are already in HU. Sources are
marked `rescale=auto`: preprocessing applies the rescale only to a volume whose values never reach
air (minimum above -500), and records per case what it did. Spacing comes from the metadata, which
is what CT-RATE's own preprocessing uses.
"""
from __future__ import annotations

import ast
import csv
from pathlib import Path

from medgmae_plans.runtime.atomic import atomic_directory, write_json_atomic, write_text_atomic
from medgmae_plans.runtime.paths import dataset_folder_name
from medgmae_plans.runtime import UserError

from ..layouts.classification import LABELS_CSV, SOURCES_CSV, LabelTable, read_rows, write_labels

DATASET_NAME = "CTRATE"
DEFAULT_DATASET_ID = 992
CTRATE_CLASSES = (
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
    "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion", "Mosaic attenuation pattern",
    "Peribronchial thickening", "Consolidation", "Bronchiectasis", "Interlobular septal thickening",
)
SPLIT_FILES = {
    "train": ("train", ("train_metadata.csv",), "train_predicted_labels.csv"),
    "valid": ("valid", ("validation_metadata.csv", "valid_metadata.csv"), "valid_predicted_labels.csv"),
}


def _read_csv(path: Path) -> list[dict]:
    """CT-RATE's CSV as one dict per row, keyed by its header."""
    rows = read_rows(path, "CT-RATE table")
    return [dict(zip(rows[0], row)) for row in rows[1:]] if rows else []


def _root(source: Path) -> Path:
    source = Path(source)
    for cand in (source, source / "dataset"):
        if (cand / "multi_abnormality_labels").is_dir():
            return cand
    raise UserError(f"{source}: no multi_abnormality_labels/ here or in dataset/ (not CT-RATE's layout)")


def _spacing(row: dict, path: Path) -> tuple[float, float, float]:
    try:
        xy = row["XYSpacing"]
        xy = ast.literal_eval(xy) if xy.strip().startswith("[") else [float(xy)] * 2
        return float(xy[0]), float(xy[1]), float(row["ZSpacing"])
    except (KeyError, ValueError, SyntaxError, IndexError):
        raise UserError(f"{path}: bad XYSpacing/ZSpacing for {row.get('VolumeName')!r}") from None


def convert_ctrate(source: Path, raw_root: Path, dataset_id: int = DEFAULT_DATASET_ID, overwrite: bool = False,
                   log=print) -> Path:
    root = _root(source)
    target = Path(raw_root) / dataset_folder_name(dataset_id, DATASET_NAME)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; pass --overwrite to replace it")
    cases, splits, labels, sources, skipped = [], [], [], [], {}
    classes = None
    for split, (folder, meta_names, label_name) in SPLIT_FILES.items():
        label_path = root / "multi_abnormality_labels" / label_name
        rows = _read_csv(label_path)
        if not rows or "VolumeName" not in rows[0]:
            raise UserError(f"{label_path}: no VolumeName column")
        these = [c for c in rows[0] if c != "VolumeName"]
        if classes is None:
            classes = these
        elif these != classes:
            raise UserError(f"{label_path}: columns differ from the train labels'")
        meta_path = next((root / "metadata" / n for n in meta_names if (root / "metadata" / n).exists()), None)
        if meta_path is None:
            raise UserError(f"{root / 'metadata'}: none of {meta_names} exists")
        meta = {r["VolumeName"]: r for r in _read_csv(meta_path)}
        on_disk = {p.name: p for p in (root / folder).rglob("*.nii.gz")} if (root / folder).is_dir() else {}
        missing = []
        for r in rows:
            name = r["VolumeName"]
            if name not in on_disk:
                missing.append(name)
                continue
            if name not in meta:
                raise UserError(f"{meta_path}: no metadata row for {name}")
            try:
                values = [int(float(r[c])) for c in classes]
            except ValueError:
                raise UserError(f"{label_path}: non-numeric label for {name}") from None
            if any(v not in (0, 1) for v in values):
                raise UserError(f"{label_path}: labels of {name} must be 0 or 1")
            m = meta[name]
            try:
                slope, intercept = float(m.get("RescaleSlope") or 1), float(m.get("RescaleIntercept") or 0)
            except ValueError:
                raise UserError(f"{meta_path}: bad RescaleSlope/RescaleIntercept for {name}") from None
            sx, sy, sz = _spacing(m, meta_path)
            case = name[: -len(".nii.gz")]
            cases.append(case)
            splits.append(split)
            labels.append(values)
            sources.append([case, str(on_disk[name].resolve()), slope, intercept, sx, sy, sz, "auto"])
        skipped[split] = missing
        log(f"{split}: {len(rows) - len(missing)} volumes found, {len(missing)} listed but not on disk")
    if not cases:
        raise UserError(f"{root}: none of the labelled volumes is on disk")
    if tuple(classes) != CTRATE_CLASSES:
        log(f"note: the label columns differ from CT-RATE's 18 published classes: {classes}")
    import numpy as np

    table = LabelTable(list(classes), cases, splits, np.asarray(labels, np.uint8))
    with atomic_directory(target, replace=overwrite) as tmp:
        write_labels(tmp / LABELS_CSV, table)
        with open(tmp / SOURCES_CSV, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["case", "image", "slope", "intercept", "spacing_x", "spacing_y", "spacing_z", "rescale"])
            w.writerows(sources)
        write_json_atomic(tmp / "dataset.json", {
            "name": DATASET_NAME, "description": "CT-RATE chest CT, multi-abnormality labels (converted by medgmae_classify convert)",
            "channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz",
            "numTraining": splits.count("train"), "numValidation": splits.count("valid"),
            "classification_labels": LABELS_CSV, "classes": list(classes)})
        summary = {"source": str(root), "cases": {s: splits.count(s) for s in SPLIT_FILES},
                   "listed_but_missing": {s: len(v) for s, v in skipped.items()}, "classes": list(classes)}
        write_json_atomic(tmp / "conversion.json", {**summary, "missing_volumes": skipped})
        write_text_atomic(tmp / "conversion.log", "\n".join(
            [f"convert CT-RATE from {root}", *(f"{s}: {summary['cases'][s]} cases, {len(skipped[s])} missing"
                                               for s in SPLIT_FILES)]) + "\n")
    log(f"wrote {target}: {len(cases)} cases")
    return target
