"""What an evaluation reads: label maps and their geometry, label names, case pairs, and runs.

A *run* is one fold folder of an nnU-Net results folder written by our fine-tuning trainers:

    $nnUNet_results/<DatasetXXX_Name>/<Trainer>__<Plans>__<config>/
        dataset.json  plans.json
        fold_<k>/medgmae_finetune.json  fold_<k>/validation/<case>.nii.gz

Its references are nnU-Net's `$nnUNet_preprocessed/<DatasetXXX_Name>/gt_segmentations/<case>.nii.gz`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medgmae_plans.constants import FINETUNE_RECORD
from medgmae_plans.runtime import UserError

KNOWN_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

# tolerances for "the same grid": mm for spacing and origin, cosines for the direction matrix
SPACING_TOL = 1e-3
ORIGIN_TOL = 1e-3
DIRECTION_TOL = 1e-4


@dataclass(frozen=True)
class Geometry:
    size: tuple[int, ...]          # (x, y, z), SimpleITK order
    spacing: tuple[float, ...]     # (x, y, z) mm
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))


def read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """A 3D label map as an integer array [D, H, W] (z, y, x) and its geometry."""
    import SimpleITK as sitk

    from preprocessing.validate import read_image

    image = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{path}: expected a 3D single-channel label map, got {image.GetDimension()}D "
                        f"with {image.GetNumberOfComponentsPerPixel()} component(s)")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise UserError(f"{path}: a label map must hold integer values, found non-integer voxels")
        array = array.astype(np.int32)
    geometry = Geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return array, geometry


def read_geometry(path: Path) -> Geometry:
    """The geometry from the file's header only (no voxels read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise UserError(f"{path}: cannot be read as an image ({str(err).strip().splitlines()[-1]})") from None
    if reader.GetDimension() != 3:  # else the grids' comparison fails with a traceback
        raise UserError(f"{path}: a {reader.GetDimension()}D image; label maps are 3D")
    return Geometry(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def check_pairs_geometry(pairs: Sequence["CasePair"]) -> None:
    """Every file whole (`check_complete`: a cut prediction would score as background) and every
    prediction on its reference's grid, before any voxel is evaluated."""
    from preprocessing.validate import check_complete, check_nifti_geometry

    for pair in pairs:
        for path in (pair.ref, pair.pred):
            check_complete(path)
            check_nifti_geometry(path)  # a header that contradicts itself (pixdim against sform)
        check_same_geometry(read_geometry(pair.ref), read_geometry(pair.pred), pair.ref, pair.pred)


def check_same_geometry(ref: Geometry, pred: Geometry, ref_path: Path, pred_path: Path) -> None:
    """One clear error naming both files when the prediction is not on the reference's grid."""
    problems = []
    if tuple(ref.size) != tuple(pred.size):
        problems.append(f"size {pred.size} vs reference {ref.size}")
    if not np.allclose(ref.spacing, pred.spacing, rtol=0, atol=SPACING_TOL):
        problems.append(f"spacing {_fmt(pred.spacing)} vs reference {_fmt(ref.spacing)} mm")
    if not np.allclose(ref.origin, pred.origin, rtol=0, atol=ORIGIN_TOL):
        problems.append(f"origin {_fmt(pred.origin)} vs reference {_fmt(ref.origin)} mm")
    if not np.allclose(ref.direction, pred.direction, rtol=0, atol=DIRECTION_TOL):
        problems.append(f"direction {_fmt(pred.direction)} vs reference {_fmt(ref.direction)}")
    if problems:
        raise UserError(f"{pred_path}: geometry differs from the reference {ref_path}: " + "; ".join(problems))


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def check_label_values(array: np.ndarray, allowed: Iterable[int], path: Path) -> None:
    """Error naming the file when it holds label ids the dataset does not declare."""
    allowed = set(int(a) for a in allowed)
    found = np.unique(array)
    unknown = [int(v) for v in found if int(v) not in allowed]
    if unknown:
        raise UserError(f"{path}: label id(s) {unknown} are not declared in dataset.json "
                        f"(declared: {sorted(allowed)})")


# ---------------------------------------------------------------- labels

def read_dataset_labels(dataset_json: Path) -> dict[int, str]:
    """{id: name} from a dataset.json's `labels` (name -> id), background included."""
    try:
        data = json.loads(Path(dataset_json).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{dataset_json}: cannot read dataset.json ({err})") from None
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"{dataset_json}: has no 'labels' mapping")
    out = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise UserError(f"{dataset_json}: label {name!r} is a region {value}; region-based datasets "
                            f"are not supported by medgmae_evaluate")
        if not isinstance(value, int) or value < 0:
            raise UserError(f"{dataset_json}: label {name!r} has id {value!r}, expected a non-negative integer")
        out[int(value)] = str(name)
    return dict(sorted(out.items()))


def file_ending_of(dataset_json: Path | None, default: str = ".nii.gz") -> str:
    if dataset_json is None:
        return default
    return json.loads(Path(dataset_json).read_text()).get("file_ending", default)


def select_labels(declared: dict[int, str] | None, requested: Sequence[int] | None,
                  source: str = "dataset.json") -> dict[int, str]:
    """The foreground labels to evaluate, {id: name}: `requested` ids (checked against `declared`),
    else every declared id except background 0."""
    if requested:
        bad = [r for r in requested if r <= 0]
        if bad:
            raise UserError(f"label id(s) {bad} given with -l: only foreground ids (> 0) are evaluated")
        if declared is None:
            return {int(r): f"label {r}" for r in dict.fromkeys(requested)}
        unknown = [r for r in requested if r not in declared]
        if unknown:
            known = ", ".join(f"{k} ({v})" for k, v in declared.items() if k)
            raise UserError(f"unknown label id(s) {unknown} given with -l; {source} declares {known}")
        return {int(r): declared[r] for r in dict.fromkeys(requested)}
    if declared is None:
        raise UserError("no dataset.json found beside the folders: give the label ids with -l")
    labels = {k: v for k, v in declared.items() if k != 0}
    if not labels:
        raise UserError(f"{source}: declares no foreground labels")
    return labels


# ---------------------------------------------------------------- case pairs

@dataclass(frozen=True)
class CasePair:
    case: str
    ref: Path
    pred: Path


def detect_ending(folder: Path) -> str:
    for path in sorted(folder.iterdir()):
        for ending in KNOWN_ENDINGS:
            if path.name.endswith(ending) and not path.name.startswith("."):
                return ending
    return ".nii.gz"


def list_cases(folder: Path, ending: str) -> dict[str, Path]:
    """{case: file} of the label maps in `folder` (hidden temporary files ignored)."""
    return {p.name[: -len(ending)]: p for p in sorted(folder.glob(f"*{ending}")) if not p.name.startswith(".")}


def pair_cases(ref_dir: Path, pred_dir: Path, ending: str, expected: Sequence[str] | None = None,
               chill: bool = False) -> list[CasePair]:
    """Reference/prediction pairs, one per case.

    `expected` (a run's validation cases) must all have a prediction and a reference and no other
    prediction may be there. Without it every reference must have a prediction (nnU-Net's default;
    `chill` evaluates the predictions present) and every prediction a reference.
    """
    for folder, what in ((ref_dir, "reference"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise UserError(f"{folder}: {what} folder does not exist")
    refs, preds = list_cases(ref_dir, ending), list_cases(pred_dir, ending)
    if not preds:
        raise UserError(f"{pred_dir}: no predictions ending in {ending}")
    if expected is not None:
        cases = list(expected)
        missing = [c for c in cases if c not in preds]
        if missing:
            raise UserError(f"{pred_dir}: no prediction for {len(missing)} of the run's case(s): {_names(missing)}")
        extra = [c for c in preds if c not in set(cases)]
        if extra:
            raise UserError(f"{pred_dir}: prediction(s) for case(s) that are not the run's to evaluate: "
                            f"{_names(extra)}")
    else:
        no_pred = [c for c in refs if c not in preds]
        if no_pred and not chill:
            raise UserError(f"{pred_dir}: no prediction for {len(no_pred)} reference case(s): {_names(no_pred)} "
                            f"(--chill evaluates only the predictions present)")
        cases = list(preds)
    no_ref = [c for c in cases if c not in refs]
    if no_ref:
        raise UserError(f"{ref_dir}: no reference for {len(no_ref)} case(s): {_names(no_ref)}")
    return [CasePair(c, refs[c], preds[c]) for c in cases]


def _names(cases: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(cases) - shown} more" if len(cases) > shown else ""
    return ", ".join(cases[:shown]) + more


# ---------------------------------------------------------------- runs

# Replicates of one (init, dataset, fraction) are trainers tagged r0, r1, ... (`medgmae_train --trainer
# MedGMAETrainer_medgmae_f10_r1`); `medgmae_evaluate --compare` reports their mean ± sd and pairs them
# with scratch's in a bootstrap interval.
REPLICATE_TAG = "r{}"


@dataclass
class Run:
    """One fold of one fine-tuning run, as `medgmae_finetune.json` describes it."""
    fold_dir: Path
    meta: dict = field(repr=False)

    @property
    def dataset(self) -> str:
        return str(self.meta["dataset"])

    @property
    def trainer(self) -> str:
        return str(self.meta.get("trainer") or self.fold_dir.parent.name.split("__")[0])

    @property
    def tag(self) -> str | None:
        """The trainer name's tag, `MedGMAETrainer_<init>_f<pct>_<tag>` (None without one). Init and tag
        hold no underscore (the trainers' NAME_PATTERN), so the tag is the fourth part."""
        parts = self.trainer.split("_", 3)
        return parts[3] if len(parts) == 4 else None

    @property
    def replicate(self) -> str:
        """Which replicate of its (init, dataset, fraction) the run is: its trainer tag, by convention
        r0, r1, r2 ...; an untagged trainer is r0 (`REPLICATE_TAG`)."""
        return self.tag or REPLICATE_TAG.format(0)

    @property
    def fold(self):
        return self.meta.get("fold", self.fold_dir.name.replace("fold_", ""))

    @property
    def init(self) -> str:
        return str(self.meta["init"])

    @property
    def fraction(self) -> float:
        return float(self.meta["fraction"])

    @property
    def validation_dir(self) -> Path:
        return self.fold_dir / "validation"

    @property
    def unfinished(self) -> str | None:
        """Why the run cannot be evaluated yet (None when it can): fine-tuning records a `status`
        ("finished" once nnU-Net's validation is written); without one, the validation folder decides."""
        status = self.meta.get("status")
        if status is not None:
            return None if status == "finished" else f"status {status!r} in {FINETUNE_RECORD}"
        if not self.validation_dir.is_dir():
            return "no validation/ folder yet"
        return None

    @property
    def val_cases(self) -> list[str] | None:
        """The validation cases the run recorded (None when it recorded none)."""
        cases = self.meta.get("val_cases")
        return [str(c) for c in cases] if cases else None

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.fold_dir.parent.name}/{self.fold_dir.name}"

    def dataset_json(self, preprocessed_root: Path) -> Path:
        for candidate in (self.fold_dir.parent / "dataset.json", preprocessed_root / self.dataset / "dataset.json"):
            if candidate.is_file():
                return candidate
        raise UserError(f"{self.fold_dir.parent}: no dataset.json (nnU-Net copies it into the results folder)")

    def reference_dir(self, preprocessed_root: Path) -> Path:
        return preprocessed_root / self.dataset / "gt_segmentations"


_REQUIRED = ("dataset", "init", "fraction")


def read_run(fold_dir: Path) -> Run:
    path = fold_dir / FINETUNE_RECORD
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise UserError(f"{path}: missing key(s) {missing}")
    return Run(fold_dir, meta)


def find_runs(folders: Sequence[Path]) -> list[Run]:
    """Every fold folder holding `medgmae_finetune.json` under the given folders (a fold, a trainer
    folder, a dataset folder or a whole nnUNet_results), in a stable order."""
    runs = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"{folder}: results folder does not exist")
        if (folder / FINETUNE_RECORD).is_file():
            found = [folder]
        else:  # hidden folders are temporary copies (atomic writes), never runs
            found = sorted(p.parent for p in folder.rglob(FINETUNE_RECORD)
                           if not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not found:
            raise UserError(f"{folder}: no fine-tuning run in it (no {FINETUNE_RECORD} below it)")
        runs.extend(read_run(f) for f in found)
    unique = {r.fold_dir.resolve(): r for r in runs}
    return sorted(unique.values(), key=lambda r: (r.dataset, r.fraction, r.init, r.trainer, str(r.fold)))


def image_for_case(raw_root: Path, dataset: str, case: str, ending: str) -> Path | None:
    """The raw CT of a case (channel 0000) in imagesTr or imagesTs, or None when it is not there."""
    for sub in ("imagesTr", "imagesTs"):
        path = Path(raw_root) / dataset / sub / f"{case}_0000{ending}"
        if path.is_file():
            return path
    return None
