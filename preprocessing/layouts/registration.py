"""The registration dataset layout that the phantom builder and the OASIS/IXI converters write.

    <root>/                              e.g. $nnUNet_raw/Registration_Phantom
        dataset_registration.json        the description below
        images/<case>.nii.gz             one volume per case, all cases on the same grid
        labels/<case>.nii.gz             optional integer label maps (structures to score)
        flows/<moving>__<fixed>.nii.gz   optional true displacement of a pair (ITK displacement field, mm)

dataset_registration.json:

    format        "medgmae-registration/1"
    name, modality, source            free text (what the converter found)
    shape_zyx, spacing_zyx            the common grid of every case
    intensity     {"scheme": "ct_window", "window": [-175, 250]}   HU -> [0, 1] as in pretraining
                  {"scheme": "minmax"}                             per image (x - min) / (max - min)
                  {"scheme": "none"}                               already in [0, 1]
    labels        {"1": "liver", ...}  the structures Dice is reported on
    cases         {"<case>": {"image": "images/<case>.nii.gz", "label": "labels/<case>.nii.gz" or null}}
    train         {"mode": "all_pairs", "cases": [...]}            every ordered pair of distinct cases
                  {"mode": "atlas", "atlas": "<case>", "cases": [...]}   atlas (moving) -> each case (fixed)
                  {"mode": "listed", "pairs": [{"moving", "fixed"}, ...]}
    val, test     [{"moving": "<case>", "fixed": "<case>", "flow": "flows/..." (optional)}, ...]

Arrays are read with SimpleITK as [z, y, x]; the pair's fixed image gives the output geometry.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgmae_plans.constants import HU_WINDOW, window_hu
from medgmae_plans.runtime import UserError

FORMAT = "medgmae-registration/1"
DESCRIPTION = "dataset_registration.json"
PREFIX = "Registration_"
SCHEMES = ("ct_window", "minmax", "none")
TRAIN_MODES = ("all_pairs", "atlas", "listed")
EVAL_SPLITS = ("val", "test")  # the listed pairs that are scored (training pairs come from `train`)


@dataclass(frozen=True)
class Pair:
    moving: str
    fixed: str
    flow: str | None = None

    @property
    def name(self) -> str:
        return f"{self.moving}__{self.fixed}"


class RegistrationDataset:
    """A validated `dataset_registration.json` and its files."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = self.root / DESCRIPTION
        if not path.is_file():
            raise UserError(f"{self.root} is not a registration dataset: {DESCRIPTION} is missing")
        try:
            self.desc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
        self.path = path
        self._validate()

    # -- description -------------------------------------------------------------------------
    def _validate(self) -> None:
        d, p = self.desc, self.path
        if d.get("format") != FORMAT:
            raise UserError(f"{p}: format {d.get('format')!r}, expected {FORMAT!r}")
        for key in ("shape_zyx", "spacing_zyx", "intensity", "labels", "cases", "train", "val"):
            if key not in d:
                raise UserError(f"{p}: missing key {key!r}")
        if d["intensity"].get("scheme") not in SCHEMES:
            raise UserError(f"{p}: intensity scheme {d['intensity'].get('scheme')!r} not one of {SCHEMES}")
        if d["train"].get("mode") not in TRAIN_MODES:
            raise UserError(f"{p}: train mode {d['train'].get('mode')!r} not one of {TRAIN_MODES}")
        for split in EVAL_SPLITS:
            for pair in self.pairs(split):
                for case in (pair.moving, pair.fixed):
                    if case not in d["cases"]:
                        raise UserError(f"{p}: {split} pair {pair.name} names unknown case {case!r}")
        for pair in self.train_pairs():
            for case in (pair.moving, pair.fixed):
                if case not in d["cases"]:
                    raise UserError(f"{p}: train pair {pair.name} names unknown case {case!r}")

    @property
    def name(self) -> str:
        return self.desc.get("name", self.root.name)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.desc["shape_zyx"])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.desc["spacing_zyx"])

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in self.desc["labels"].items()}

    @property
    def has_labels(self) -> bool:
        return bool(self.labels) and all(c.get("label") for c in self.desc["cases"].values())

    def pairs(self, split: str) -> list[Pair]:
        if split not in EVAL_SPLITS:
            raise UserError(f"unknown split {split!r}; expected {' or '.join(EVAL_SPLITS)}")
        return [Pair(q["moving"], q["fixed"], q.get("flow")) for q in self.desc.get(split, [])]

    def train_pairs(self) -> list[Pair]:
        """Every training pair the sampler may draw, in a fixed order."""
        t = self.desc["train"]
        if t["mode"] == "listed":
            return [Pair(q["moving"], q["fixed"], q.get("flow")) for q in t["pairs"]]
        cases = list(t["cases"])
        if t["mode"] == "atlas":
            return [Pair(t["atlas"], c) for c in cases if c != t["atlas"]]
        return [Pair(a, b) for a in cases for b in cases if a != b]

    # -- files -------------------------------------------------------------------------------
    def _file(self, rel: str) -> Path:
        path = self.root / rel
        if not path.is_file():
            raise UserError(f"{path} is missing (listed in {self.path})")
        return path

    def image_path(self, case: str) -> Path:
        return self._file(self.desc["cases"][case]["image"])

    def label_path(self, case: str) -> Path | None:
        rel = self.desc["cases"][case].get("label")
        return self._file(rel) if rel else None

    def read(self, path: Path, *, vector: bool = False):
        """(array [z, y, x] or [z, y, x, 3], SimpleITK image for the geometry), checked against the grid."""
        import SimpleITK as sitk

        from preprocessing.validate import read_image

        img = read_image(path)
        arr = sitk.GetArrayFromImage(img)
        if tuple(arr.shape[:3]) != self.shape or (vector and arr.shape[3:] != (3,)) or (not vector and arr.ndim != 3):
            raise UserError(f"{path}: shape {arr.shape} (z, y, x{', 3' if vector else ''}) differs from the "
                            f"dataset grid {self.shape}")
        return arr, img

    def image(self, case: str) -> np.ndarray:
        """Normalised image [z, y, x] float32 in [0, 1]."""
        path = self.image_path(case)
        arr, _ = self.read(path)
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise UserError(f"{path}: contains NaN or infinite voxels")
        return normalise(arr, self.desc["intensity"])

    def label(self, case: str) -> np.ndarray | None:
        path = self.label_path(case)
        if path is None:
            return None
        arr, _ = self.read(path)
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.allclose(arr, np.round(arr)):
                raise UserError(f"{path}: label map has non-integer values")
        return arr.astype(np.int16)

    def flow(self, pair: Pair) -> np.ndarray | None:
        """The pair's true displacement as a DDF [3, z, y, x] in voxels, or None."""
        if not pair.flow:
            return None
        path = self._file(pair.flow)
        arr, img = self.read(path, vector=True)
        return itk_to_ddf(arr, img)


def normalise(arr: np.ndarray, intensity: dict) -> np.ndarray:
    scheme = intensity["scheme"]
    if scheme == "ct_window":
        return window_hu(arr, intensity.get("window", HU_WINDOW))
    if scheme == "minmax":
        lo, hi = float(arr.min()), float(arr.max())
        return ((arr - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    return arr.astype(np.float32)


def itk_to_ddf(arr: np.ndarray, img) -> np.ndarray:
    """ITK displacement field (array [z, y, x, 3] of physical (x, y, z) mm) -> DDF [3, z, y, x] in voxels."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    # physical = direction @ diag(spacing) @ index  =>  index = diag(1/spacing) direction^T physical
    idx = np.einsum("ij,zyxj->zyxi", np.diag(1.0 / spacing) @ direction.T, arr.astype(np.float64))
    return np.ascontiguousarray(idx[..., ::-1].transpose(3, 0, 1, 2)).astype(np.float32)


def ddf_to_itk(ddf: np.ndarray, reference):
    """DDF [3, z, y, x] in voxels -> SimpleITK displacement field (physical mm) on `reference`'s geometry."""
    import SimpleITK as sitk

    direction = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(reference.GetSpacing(), dtype=np.float64)
    idx_xyz = ddf.astype(np.float64)[::-1].transpose(1, 2, 3, 0)  # [z, y, x, (x, y, z)]
    phys = np.einsum("ij,zyxj->zyxi", direction @ np.diag(spacing), idx_xyz)
    out = sitk.GetImageFromArray(phys.astype(np.float64), isVector=True)
    out.CopyInformation(reference)
    return out


def resolve(text: str | Path, raw_root: Path) -> Path:
    """A registration dataset folder from a path or a name: 'Phantom', 'OASIS', 'Registration_IXI'..."""
    path = Path(text)
    if (path / DESCRIPTION).is_file():
        return path
    name = str(text)
    wanted = {name.lower(), (PREFIX + name).lower()}
    found = sorted(p for p in raw_root.glob(PREFIX + "*") if p.name.lower() in wanted) if raw_root.is_dir() else []
    if found:
        return found[0]
    have = sorted(p.name for p in raw_root.glob(PREFIX + "*")) if raw_root.is_dir() else []
    raise UserError(f"no registration dataset {name!r} (a folder with {DESCRIPTION}, or {PREFIX}<name> in "
                    f"{raw_root}; found: {', '.join(have) or 'none'})")
