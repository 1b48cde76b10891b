"""IXI as prepared by TransMorph (atlas-to-patient) -> the registration layout (`Registration_IXI`).

Assumed source layout (TransMorph's preprocessed IXI release; see DATASETS.md):

    SOURCE/atlas.pkl                    (image, label): the atlas, the *moving* image of every pair
    SOURCE/Train/subject_<n>.pkl        403 subjects      each a pickled (image, label) pair of
    SOURCE/Val/subject_<n>.pkl          58                numpy arrays 160 x 192 x 224, image in [0, 1],
    SOURCE/Test/subject_<n>.pkl         115               label in FreeSurfer ids

The pickles are read as plain data only (`medgmae_plans.runtime.safe_load`: numpy arrays, no code runs). Labels are
remapped as TransMorph's `Seg_norm` does (FreeSurfer id -> its index in SEG_TABLE, 0..45), and Dice
is reported on TransMorph's 30 VOI indices. Arrays are used in their stored axis order as (z, y, x)
with 1 mm spacing and identity direction, which is how TransMorph feeds them to its networks.
Pairs: atlas (moving) -> each subject (fixed) for train, validation and test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medgmae_plans.runtime import UserError
from medgmae_plans.runtime.safe_load import load_pickle
from preprocessing.validate import write_image

from .registration_common import check_target, write_dataset

SEG_TABLE = (0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 30, 31, 41, 42, 43, 44, 46, 47,
             49, 50, 51, 52, 53, 54, 58, 60, 62, 63, 72, 77, 80, 85, 251, 252, 253, 254, 255)
VOI = (1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22, 23, 25, 26, 27, 28, 29, 30, 31, 32, 34, 36)
FREESURFER = {2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
              5: "Left-Inf-Lat-Vent", 7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex",
              10: "Left-Thalamus", 11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum", 14: "3rd-Ventricle",
              15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus", 18: "Left-Amygdala", 24: "CSF",
              26: "Left-Accumbens-area", 28: "Left-VentralDC", 30: "Left-vessel", 31: "Left-choroid-plexus",
              41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex", 43: "Right-Lateral-Ventricle",
              44: "Right-Inf-Lat-Vent", 46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex",
              49: "Right-Thalamus", 50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum",
              53: "Right-Hippocampus", 54: "Right-Amygdala", 58: "Right-Accumbens-area", 60: "Right-VentralDC",
              62: "Right-vessel", 63: "Right-choroid-plexus", 72: "5th-Ventricle", 77: "WM-hypointensities",
              80: "non-WM-hypointensities", 85: "Optic-Chiasm", 251: "CC_Posterior", 252: "CC_Mid_Posterior",
              253: "CC_Central", 254: "CC_Mid_Anterior", 255: "CC_Anterior"}
SPLITS = {"Train": "train", "Val": "val", "Test": "test"}


def seg_norm(label: np.ndarray) -> np.ndarray:
    """FreeSurfer ids -> indices into SEG_TABLE (ids not in the table -> 0), as TransMorph's Seg_norm."""
    lut = np.zeros(max(SEG_TABLE) + 1, np.int16)
    lut[list(SEG_TABLE)] = np.arange(len(SEG_TABLE), dtype=np.int16)
    lab = np.asarray(label).astype(np.int64)
    out = np.zeros(lab.shape, np.int16)
    inside = (lab >= 0) & (lab <= max(SEG_TABLE))
    out[inside] = lut[lab[inside]]
    return out


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = load_pickle(path)  # plain data (numpy arrays) only: a planted pickle runs nothing
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise UserError(f"{path}: expected a pickled (image, label) pair")
    img, lab = (np.asarray(a) for a in obj)
    if img.ndim != 3 or img.shape != lab.shape:
        raise UserError(f"{path}: image {img.shape} and label {lab.shape} must be 3D and equal")
    return img.astype(np.float32), seg_norm(lab)


def convert_ixi(source: Path, target: Path, overwrite: bool = False, log=print) -> Path:
    import SimpleITK as sitk

    source = Path(source)
    if not (source / "atlas.pkl").is_file():
        raise UserError(f"{source / 'atlas.pkl'} is missing (expected TransMorph's IXI_data folder)")
    check_target(target, overwrite)
    files = {split: sorted((source / folder).glob("*.pkl")) for folder, split in SPLITS.items()}
    if not files["train"] or not files["val"]:
        raise UserError(f"{source}: Train/ and Val/ must hold subject .pkl files")
    shape = _load(source / "atlas.pkl")[0].shape
    cases = {"atlas": source / "atlas.pkl"}
    split_of = {}
    for split, paths in files.items():
        for p in paths:
            name = f"IXI_{split}_{p.stem}"
            cases[name], split_of[name] = p, split
    desc = {"name": "IXI", "modality": "MR (T1)", "source": f"TransMorph IXI layout at {source}",
            "shape_zyx": list(shape), "spacing_zyx": [1.0, 1.0, 1.0], "intensity": {"scheme": "none"},
            "labels": {str(i): FREESURFER[SEG_TABLE[i]] for i in VOI},
            "cases": {n: {"image": f"images/{n}.nii.gz", "label": f"labels/{n}.nii.gz"} for n in cases},
            "train": {"mode": "atlas", "atlas": "atlas", "cases": [n for n, s in split_of.items() if s == "train"]},
            "val": [{"moving": "atlas", "fixed": n} for n, s in split_of.items() if s == "val"],
            "test": [{"moving": "atlas", "fixed": n} for n, s in split_of.items() if s == "test"]}
    counts = {s: sum(1 for v in split_of.values() if v == s) for s in SPLITS.values()}
    lines = [f"source {source}", f"atlas + {counts['train']} train, {counts['val']} validation, {counts['test']} test "
             f"subjects; grid {list(shape)}; labels remapped with TransMorph's Seg_norm, Dice over {len(VOI)} VOIs"]

    def write_cases(tmp: Path) -> None:
        for n, p in cases.items():
            img, lab = _load(p)
            if img.shape != shape:
                raise UserError(f"{p}: shape {img.shape} differs from the atlas's {shape}")
            for arr, sub in ((img, "images"), (lab, "labels")):
                write_image(sitk.GetImageFromArray(arr), tmp / sub / f"{n}.nii.gz")

    write_dataset(target, desc, write_cases, lines, overwrite)
    log(f"wrote {target}: " + lines[1])
    return target
