"""Classification data: image sources, the paper's preprocessing and fast-loading storage.

The dataset layout (labels and sources CSVs) is `preprocessing.layouts.classification`.

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

from medgmae_plans.runtime.atomic import atomic_path, write_json_atomic
from medgmae_plans.constants import window_hu
from medgmae_plans.runtime import UserError, progress
from preprocessing.layouts.classification import SOURCES_CSV, LabelTable

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

    from preprocessing.validate import check_ct_image, read_image

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
