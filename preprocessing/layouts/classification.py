"""The classification dataset layout: what `medgmae_classify convert` (CT-RATE) writes and the task reads.

A classification dataset is an nnU-Net raw folder with

    classification_labels.csv    case, split (train | valid), one 0/1 column per class
    classification_sources.csv   optional: case, image, slope, intercept, spacing_x, spacing_y, spacing_z
                                 (CT-RATE: images stay where they are; HU and spacing from its metadata)

Without a sources file, case `c` is read from `imagesTr/c_0000.nii.gz` or `imagesTs/c_0000.nii.gz`
(`medgmae_trainers.classification.data` reads the images and preprocesses them).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgmae_plans.runtime import UserError
from medgmae_plans.runtime.atomic import atomic_path

LABELS_CSV = "classification_labels.csv"
SOURCES_CSV = "classification_sources.csv"
SPLITS = ("train", "valid")


@dataclass
class LabelTable:
    classes: list[str]
    cases: list[str]
    splits: list[str]
    labels: np.ndarray  # uint8 [N, K]

    def subset(self, split: str) -> "LabelTable":
        idx = [i for i, s in enumerate(self.splits) if s == split]
        return LabelTable(self.classes, [self.cases[i] for i in idx], [split] * len(idx), self.labels[idx])


def read_rows(path: Path, what: str) -> list[list[str]]:
    """The rows of a CSV file; an unreadable file is a one-line `UserError` naming it as `what`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from None


def read_labels(path: Path) -> LabelTable:
    """Read and check a labels CSV: header case, split, classes...; 0/1 values; known splits; unique cases."""
    path = Path(path)
    rows = read_rows(path, "labels")
    if not rows or rows[0][:2] != ["case", "split"] or len(rows[0]) < 3:
        raise UserError(f"{path}: header must be 'case,split,<class>...' (got {rows[0] if rows else 'nothing'})")
    classes = rows[0][2:]
    cases, splits, values = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise UserError(f"{path}: line {line} has {len(row)} fields, the header has {len(rows[0])}")
        if row[1] not in SPLITS:
            raise UserError(f"{path}: line {line}: split {row[1]!r} is not one of {SPLITS}")
        if any(v not in ("0", "1") for v in row[2:]):
            raise UserError(f"{path}: line {line}: labels must be 0 or 1")
        cases.append(row[0])
        splits.append(row[1])
        values.append([int(v) for v in row[2:]])
    if len(set(cases)) != len(cases):
        raise UserError(f"{path}: a case is listed twice")
    if not cases:
        raise UserError(f"{path}: no cases")
    return LabelTable(classes, cases, splits, np.asarray(values, np.uint8).reshape(len(cases), len(classes)))


def write_labels(path: Path, table: LabelTable) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["case", "split", *table.classes])
        for c, s, row in zip(table.cases, table.splits, table.labels):
            w.writerow([c, s, *map(int, row)])
