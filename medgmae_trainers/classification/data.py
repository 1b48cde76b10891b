"""Classification data: label tables, image sources, the paper's preprocessing and fast-loading storage.

A classification dataset is an nnU-Net raw folder with

    classification_labels.csv    case, split (train | valid), one 0/1 column per class
    classification_sources.csv   optional: case, image, slope, intercept, spacing_x, spacing_y, spacing_z
                                 (CT-RATE: images stay where they are; HU and spacing from its metadata)

Without a sources file, case `c` is read from `imagesTr/c_0000.nii.gz` or `imagesTs/c_0000.nii.gz`.

Preprocessing (paper, section 4.2): reorient to LPS, resample linearly to 1.5 x 1.5 x 3.0 mm
(x, y, z), clip HU to [-1000, 1000] and scale to [0, 1], centre-crop or pad (with air, 0) to
192 x 192 x 96 (x, y, z). Each case is stored as a float16 `.npy` [D, H, W] that loads by memory
map (7 MB at the paper's size) under

    $nnUNet_preprocessed/<dataset>/Classification_<geometry tag>/<case>.npy, preprocess.json
"""
from __future__ import annotations

import csv
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae_plans.atomic import atomic_path, write_json_atomic
from medgmae_plans.constants import window_hu
from medgmae_plans.runtime import UserError, progress

LABELS_CSV = "classification_labels.csv"
SOURCES_CSV = "classification_sources.csv"
SPLITS = ("train", "valid")
AIR_HU = -1000.0


@dataclass(frozen=True)
class Geometry:
    """Target voxel grid and intensity window. Axis order (z, y, x) like the arrays."""

    spacing_zyx: tuple[float, float, float] = (3.0, 1.5, 1.5)
    size_zyx: tuple[int, int, int] = (96, 192, 192)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)

    def tag(self) -> str:
        s = "x".join(f"{v:g}" for v in reversed(self.spacing_zyx))
        n = "x".join(str(v) for v in reversed(self.size_zyx))
        lo, hi = self.hu_window
        return f"Classification_s{s}_v{n}_w{lo:g}_{hi:g}"

    def to_json(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "Geometry":
        return cls(tuple(float(v) for v in d["spacing_zyx"]), tuple(int(v) for v in d["size_zyx"]),
                   tuple(float(v) for v in d["hu_window"]))


@dataclass
class LabelTable:
    classes: list[str]
    cases: list[str]
    splits: list[str]
    labels: np.ndarray  # uint8 [N, K]

    def subset(self, split: str) -> "LabelTable":
        idx = [i for i, s in enumerate(self.splits) if s == split]
        return LabelTable(self.classes, [self.cases[i] for i in idx], [split] * len(idx), self.labels[idx])


def read_labels(path: Path) -> LabelTable:
    """Read and check a labels CSV: header case, split, classes...; 0/1 values; known splits; unique cases."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise UserError(f"cannot read labels {path}: {err.strerror or err}") from None
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


@dataclass(frozen=True)
class Source:
    """Where a case's image is and how its stored values become HU / millimetres."""

    image: str
    slope: float = 1.0
    intercept: float = 0.0
    spacing_xyz: tuple[float, float, float] | None = None  # overrides the file's header when given
    rescale: str = "never"  # never | always | auto (apply slope/intercept unless values already reach air HU)


def read_sources(raw_folder: Path, cases: Sequence[str]) -> dict[str, Source]:
    raw_folder = Path(raw_folder)
    path = raw_folder / SOURCES_CSV
    if not path.exists():
        out = {}
        for c in cases:
            for sub in ("imagesTr", "imagesTs"):
                image = raw_folder / sub / f"{c}_0000.nii.gz"
                if image.exists():
                    out[c] = Source(str(image))
                    break
            else:
                raise UserError(f"{raw_folder}: no image for case {c!r} in imagesTr/ or imagesTs/ (and no {SOURCES_CSV})")
        return out
    with open(path, newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    out = {}
    for c in cases:
        if c not in rows:
            raise UserError(f"{path}: no row for case {c!r}")
        r = rows[c]
        try:
            spacing = (float(r["spacing_x"]), float(r["spacing_y"]), float(r["spacing_z"])) if r.get("spacing_x") else None
            out[c] = Source(r["image"], float(r["slope"]), float(r["intercept"]), spacing, r.get("rescale") or "auto")
        except (KeyError, ValueError) as err:
            raise UserError(f"{path}: bad row for case {c!r}: {err}") from None
    return out


def crop_or_pad(vol: np.ndarray, size: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Centre-crop or pad `vol` [D, H, W] to `size`; padding is split evenly (the extra voxel after)."""
    out = np.full(tuple(size), fill, vol.dtype)
    src, dst = [], []
    for n, m in zip(vol.shape, size):
        if n >= m:
            a = (n - m) // 2
            src.append(slice(a, a + m))
            dst.append(slice(0, m))
        else:
            a = (m - n) // 2
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def preprocess_image(source: Source, geometry: Geometry) -> tuple[np.ndarray, dict]:
    """Read, convert to HU, reorient, resample, window, crop/pad. Returns float16 [D, H, W] and a record."""
    import SimpleITK as sitk

    from medgmae_plans.validate import check_ct_image, read_image

    # the toolkit's one reader and CT check: whole file, a header that agrees with itself, 3D, one
    # component, a pixel type that holds HU (or stored values that rescale to it), finite voxels
    img = read_image(source.image)
    check_ct_image(img, source.image)
    img = sitk.Cast(img, sitk.sitkFloat32)
    record = {"image": source.image, "original_size_xyz": list(img.GetSize()),
              "original_spacing_xyz": list(img.GetSpacing())}
    if source.spacing_xyz is not None:
        img.SetSpacing(source.spacing_xyz)
        record["original_spacing_xyz"] = list(source.spacing_xyz)
    apply = source.rescale == "always"
    if source.rescale == "auto":
        # Stored CT values start near 0 (air -1024 HU is stored as 0 with intercept -1024); HU reach air.
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(img)
        apply = stats.GetMinimum() > -500
    if apply and (source.slope != 1.0 or source.intercept != 0.0):
        img = img * source.slope + source.intercept
    record["rescaled"] = bool(apply)
    img = sitk.DICOMOrient(img, "LPS")
    target = tuple(reversed(geometry.spacing_zyx))  # x, y, z
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(img.GetSize(), img.GetSpacing(), target)]
    img = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), target,
                        img.GetDirection(), AIR_HU, sitk.sitkFloat32)
    # the toolkit's one windowing formula, at this task's own window (CT-RATE's --hu-window, not the CT window)
    arr = window_hu(sitk.GetArrayFromImage(img), geometry.hu_window)
    record["resampled_shape_zyx"] = list(arr.shape)
    return crop_or_pad(arr, geometry.size_zyx).astype(np.float16), record


def _preprocess_one(case: str, source: Source, geometry: Geometry, out: Path) -> dict:
    arr, record = preprocess_image(source, geometry)
    with atomic_path(out / f"{case}.npy") as tmp:
        np.save(tmp, arr)
    return record


def preprocessed_folder(preprocessed_root: Path, dataset: str, geometry: Geometry) -> Path:
    return Path(preprocessed_root) / dataset / geometry.tag()


def ensure_preprocessed(raw_folder: Path, out: Path, table: LabelTable, geometry: Geometry, workers: int = 1,
                        pbar: bool = True, log=print) -> Path:
    """Preprocess every case of `table` that `out` lacks (a killed run resumes case by case)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in table.cases if not (out / f"{c}.npy").exists()]
    manifest = out / "preprocess.json"
    records = {}
    if manifest.exists():
        import json

        records = json.loads(manifest.read_text()).get("cases", {})
    if todo:
        sources = read_sources(raw_folder, todo)
        log(f"preprocessing {len(todo)} cases into {out}")
        bar = progress(total=len(todo), enabled=pbar, desc="preprocess", unit="case")
        if workers <= 1 or len(todo) == 1:
            for c in todo:
                records[c] = _preprocess_one(c, sources[c], geometry, out)
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                futures = {c: pool.submit(_preprocess_one, c, sources[c], geometry, out) for c in todo}
                for c, fut in futures.items():
                    records[c] = fut.result()
                    bar.update()
        bar.close()
        write_json_atomic(manifest, {"geometry": geometry.to_json(), "raw": str(raw_folder), "cases": records})
    return out


def load_volume(folder: Path, case: str) -> np.ndarray:
    path = Path(folder) / f"{case}.npy"
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load preprocessed case {path}: {err}") from None


def fraction_subset(cases: Sequence[str], fraction: float, seed: int = 12345) -> list[str]:
    """A fixed, seeded, nested subset: the 10% cases are the first tenth of one permutation of the sorted
    cases, so they lie inside the 100% and contain the 1% (at least one case)."""
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1] (got {fraction})")
    ordered = sorted(cases)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return sorted(ordered[i] for i in perm[:n])


class VolumeDataset:
    """torch-style dataset over preprocessed cases: (volume [1, D, H, W] float32, labels [K] float32).

    `flip` is the probability of a left-right flip (training only); draws come from `torch`'s RNG, so the
    loader's seeded generator makes an epoch reproducible.
    """

    def __init__(self, folder: Path, cases: Sequence[str], labels: np.ndarray, flip: float = 0.0):
        self.folder, self.cases, self.labels, self.flip = Path(folder), list(cases), labels, flip

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int):
        import torch

        vol = torch.from_numpy(np.array(load_volume(self.folder, self.cases[i]), np.float32))[None]
        if self.flip and torch.rand(()) < self.flip:
            vol = vol.flip(-1)
        return vol, torch.from_numpy(self.labels[i].astype(np.float32))


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))
