"""OASIS as distributed for Learn2Reg 2021 task 3 -> the registration layout (`Registration_OASIS`).

Assumed source layout (the neurite-oasis release that Learn2Reg 2021 task 3 used; see DATASETS.md):

    SOURCE/OASIS_OAS1_0001_MR1/aligned_norm.nii.gz    skull-stripped, affinely aligned T1, 160 x 192 x 224
    SOURCE/OASIS_OAS1_0001_MR1/aligned_seg35.nii.gz   35 structures (FreeSurfer-derived)
    SOURCE/seg35_labels.txt        optional: "<id> <name>" lines naming the 35 structures
    SOURCE/pairs_val.csv           optional: Learn2Reg's validation pairs, columns fixed,moving (subject numbers)

Split (Learn2Reg 2021 task 3, as in VoCo/TransMorph): subjects 1..437 train (inter-subject, every
ordered pair), 438..457 validation with the consecutive pairs fixed i / moving i+1 (or the listed
pairs_val.csv), the rest test with consecutive pairs. Intensities: per-image min-max to [0, 1].
Dice is reported over every structure id found in the label maps (1..35).
"""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

from medgmae_plans.runtime import UserError
from preprocessing.validate import read_image

from .registration_common import check_target, write_dataset

SUBJECT = re.compile(r"^OASIS_OAS1_(\d{4})_MR1$")
IMAGE, LABEL = "aligned_norm.nii.gz", "aligned_seg35.nii.gz"
VAL_FIRST, VAL_LAST = 438, 457


def _pairs_consecutive(ids: list[int]) -> list[tuple[int, int]]:
    """(fixed, moving) = (i, next i) over the sorted ids."""
    return list(zip(ids, ids[1:]))


def _read_pairs(path: Path) -> list[tuple[int, int]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"fixed", "moving"} <= set(rows[0]):
        raise UserError(f"{path}: expected columns fixed,moving")
    try:
        return [(int(r["fixed"]), int(r["moving"])) for r in rows]
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None


def _names(source: Path, ids_found: set[int]) -> dict[str, str]:
    path = source / "seg35_labels.txt"
    names = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) > 0:
                names[parts[0]] = parts[1].strip()
    return {str(i): names.get(str(i), f"structure {i}") for i in sorted(ids_found)}


def convert_oasis(source: Path, target: Path, overwrite: bool = False, log=print) -> Path:
    import SimpleITK as sitk
    import numpy as np

    source = Path(source)
    if not source.is_dir():
        raise UserError(f"{source} is not a folder")
    check_target(target, overwrite)
    subjects = {}
    for d in sorted(source.iterdir()):
        m = SUBJECT.match(d.name)
        if m and d.is_dir():
            for f in (IMAGE, LABEL):
                if not (d / f).is_file():
                    raise UserError(f"{d / f} is missing")
            subjects[int(m.group(1))] = d
    if len(subjects) < 3:
        raise UserError(f"{source}: found {len(subjects)} OASIS_OAS1_XXXX_MR1 folders, need at least 3")
    shape, label_ids, lines = None, set(), []
    for sid, d in subjects.items():
        img, lab = read_image(d / IMAGE), read_image(d / LABEL)
        if img.GetSize() != lab.GetSize():
            raise UserError(f"{d / LABEL}: size {lab.GetSize()} differs from its image's {img.GetSize()}")
        if shape is None:
            shape, spacing = img.GetSize(), img.GetSpacing()
        elif img.GetSize() != shape:
            raise UserError(f"{d / IMAGE}: size {img.GetSize()} differs from the first subject's {shape}")
        label_ids |= {int(v) for v in np.unique(sitk.GetArrayViewFromImage(lab)) if v}
    name = lambda sid: f"OASIS_{sid:04d}"
    ids = sorted(subjects)
    train = [i for i in ids if i < VAL_FIRST]
    val_ids = [i for i in ids if VAL_FIRST <= i <= VAL_LAST]
    test_ids = [i for i in ids if i > VAL_LAST]
    if (source / "pairs_val.csv").is_file():
        val_pairs = _read_pairs(source / "pairs_val.csv")
        for f, m in val_pairs:
            if f not in subjects or m not in subjects:
                raise UserError(f"{source / 'pairs_val.csv'}: pair {f},{m} names a subject that is not in {source}")
    else:
        val_pairs = _pairs_consecutive(val_ids)
    if len(train) < 2 or not val_pairs:
        raise UserError(f"{source}: need >= 2 training subjects (< {VAL_FIRST}) and validation subjects "
                        f"{VAL_FIRST}..{VAL_LAST} (found {len(train)} and {len(val_ids)})")
    pair = lambda f, m: {"moving": name(m), "fixed": name(f)}
    desc = {"name": "OASIS", "modality": "MR (T1)", "source": f"Learn2Reg 2021 task 3 layout at {source}",
            "shape_zyx": list(reversed(shape)), "spacing_zyx": list(reversed(spacing)),
            "intensity": {"scheme": "minmax"}, "labels": _names(source, label_ids),
            "cases": {name(i): {"image": f"images/{name(i)}.nii.gz", "label": f"labels/{name(i)}.nii.gz"} for i in ids},
            "train": {"mode": "all_pairs", "cases": [name(i) for i in train]},
            "val": [pair(f, m) for f, m in val_pairs], "test": [pair(f, m) for f, m in _pairs_consecutive(test_ids)]}
    lines = [f"source {source}", f"{len(ids)} subjects: {len(train)} train, {len(val_ids)} validation, "
             f"{len(test_ids)} test; {len(desc['val'])} validation pairs, {len(desc['test'])} test pairs",
             f"grid {desc['shape_zyx']} (z, y, x) at {desc['spacing_zyx']} mm; {len(label_ids)} structures"]

    def write_cases(tmp: Path) -> None:
        for i in ids:
            shutil.copyfile(subjects[i] / IMAGE, tmp / "images" / f"{name(i)}.nii.gz")
            shutil.copyfile(subjects[i] / LABEL, tmp / "labels" / f"{name(i)}.nii.gz")

    write_dataset(target, desc, write_cases, lines, overwrite)
    log(f"wrote {target}: " + lines[1])
    return target
