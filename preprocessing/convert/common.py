"""What every converter shares: case specs, label remapping, and writing an nnU-Net raw dataset.

A converter only finds its dataset's files and says how its label ids map to ours
(`Conversion`); `write_raw_dataset` does the rest: checks each label against its image's
geometry, remaps or merges labels, writes `imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz`,
`imagesTs/` and `dataset.json`, all under a temporary folder that is renamed into
`nnUNet_raw/DatasetXXX_Name` only when every case converted.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgmae_plans.runtime.atomic import replaced_directory, write_json_atomic, write_text_atomic
from medgmae_plans.datasets import available_datasets
from medgmae_plans.runtime.paths import dataset_folder_name
from medgmae_plans.runtime import UserError
from preprocessing.validate import _same_geometry, check_complete, label_values, read_image, run_jobs, write_image


@dataclass(frozen=True)
class CaseSpec:
    """One case to write. `label` is a label map (remapped by the conversion's `label_map`), or
    `masks`: binary mask files with the output id each becomes (merged, later ids win overlaps)."""
    case_id: str
    image: Path
    label: Path | None = None
    masks: tuple[tuple[Path, int], ...] = ()

    @property
    def labelled(self) -> bool:
        return self.label is not None or bool(self.masks)


@dataclass
class Conversion:
    """What a converter found: cases, the output label map, and how source ids map onto it."""
    name: str                          # dataset name after DatasetXXX_
    labels: dict[str, int]             # output label names -> ids (consecutive from background 0)
    train: list[CaseSpec]
    test: list[CaseSpec] = field(default_factory=list)
    label_map: dict[int, int] | None = None   # source id -> output id (None: ids kept)
    notes: list[str] = field(default_factory=list)
    reference: str = ""


def find_folder(source: Path, *candidates: str) -> Path:
    """The first of `source/<candidate>` (or one level below `source`) that exists."""
    source = Path(source)
    roots = [source] + sorted(p for p in source.iterdir() if p.is_dir()) if source.is_dir() else [source]
    for root in roots:
        for candidate in candidates:
            if (root / candidate).is_dir():
                return root / candidate
    raise UserError(f"{source}: expected {' or '.join(candidates)} inside (the dataset's published layout)")


def _read_header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise UserError(f"{path}: cannot be read as an image") from None
    return reader


def _copy_image(src: Path, dst: Path) -> sitk.Image | None:
    """Copy a `.nii.gz` as bytes (fast); re-encode other formats. Returns the image if it was read."""
    if src.name.lower().endswith(".nii.gz"):
        check_complete(src)  # a byte copy must not carry a cut file into the dataset
        _read_header(src)
        shutil.copyfile(src, dst)
        return None
    image = read_image(src)
    write_image(image, dst)
    return image


def _remap(values: np.ndarray, mapping: dict[int, int], path: Path) -> np.ndarray:
    found = label_values(values, path)
    unknown = sorted(set(found) - set(mapping) - {0})
    if unknown:
        raise UserError(f"{path}: label values {unknown} are not in this dataset's documented label map")
    table = np.zeros(max(max(found), max(mapping)) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table[values.astype(np.int64)]


def convert_case(spec: CaseSpec, out: Path, folder: str, label_map: dict[int, int] | None) -> dict:
    """Write one case into `out/<folder>` (+ labelsTr); returns what was found."""
    image_path = out / folder / f"{spec.case_id}_0000.nii.gz"
    image = _copy_image(spec.image, image_path)
    info = {"case": spec.case_id, "overlap_voxels": 0}
    if not spec.labelled:
        return info
    reference = image if image is not None else read_image(spec.image)
    if spec.label is not None:
        seg = read_image(spec.label)
        problem = _same_geometry(reference, seg)
        if problem:
            raise UserError(f"{spec.label}: {problem} ({spec.image})")
        voxels = _remap(sitk.GetArrayViewFromImage(seg), label_map, spec.label)
    else:
        voxels = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.uint8)
        for mask_path, label_id in sorted(spec.masks, key=lambda m: m[1]):
            mask = read_image(mask_path)
            problem = _same_geometry(reference, mask)
            if problem:
                raise UserError(f"{mask_path}: {problem} ({spec.image})")
            inside = sitk.GetArrayViewFromImage(mask) > 0
            info["overlap_voxels"] += int(np.count_nonzero(inside & (voxels > 0)))
            voxels[inside] = label_id
    out_seg = sitk.GetImageFromArray(voxels.astype(np.uint8))
    out_seg.CopyInformation(reference)
    write_image(out_seg, out / "labelsTr" / f"{spec.case_id}.nii.gz")
    return info


def _check_labels(labels: dict[str, int]) -> None:
    ids = sorted(labels.values())
    if ids != list(range(len(ids))) or labels.get("background") != 0:
        raise ValueError(f"output labels must be consecutive from background 0: {labels}")


def write_raw_dataset(conversion: Conversion, raw_root: Path, dataset_id: int, source: Path,
                      num_processes: int = 1, overwrite: bool = False, bar=lambda it: it, log=print) -> Path:
    """Write `conversion` as `raw_root/DatasetXXX_Name`; refuses to replace an existing one unless `overwrite`."""
    _check_labels(conversion.labels)
    if not conversion.train:
        raise UserError(f"{source}: no labelled cases found")
    target = Path(raw_root) / dataset_folder_name(dataset_id, conversion.name)
    clashes = [n for n in available_datasets([raw_root]) if n.startswith(f"Dataset{dataset_id:03d}_") and n != target.name]
    if clashes:
        raise UserError(f"{raw_root / clashes[0]}: dataset id {dataset_id} is taken; pass --dataset-id")
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it")
    start = time.time()
    with replaced_directory(target) as tmp:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if conversion.test else ()):
            (tmp / sub).mkdir()
        # no map: ids are kept, but values outside the declared labels are still refused
        label_map = conversion.label_map or {i: i for i in conversion.labels.values() if i}
        jobs = [(spec, tmp, "imagesTr", label_map) for spec in conversion.train]
        jobs += [(spec, tmp, "imagesTs", None) for spec in conversion.test]
        infos = run_jobs(jobs, convert_case, num_processes, bar)
        overlaps = sum(i["overlap_voxels"] for i in infos)
        if overlaps:
            conversion.notes.append(f"{overlaps} voxels were claimed by more than one mask; the higher label id kept them")
        write_json_atomic(tmp / "dataset.json", {
            "name": conversion.name,
            "description": f"converted by medgmae_convert from {source}",
            "reference": conversion.reference,
            "channel_names": {"0": "CT"},
            "labels": conversion.labels,
            "numTraining": len(conversion.train),
            "file_ending": ".nii.gz",
            "overwrite_image_reader_writer": "SimpleITKIO",
        })
        report = {"source": str(source), "dataset": target.name, "train_cases": len(conversion.train),
                  "test_cases": len(conversion.test), "labels": conversion.labels,
                  "label_map": conversion.label_map, "notes": conversion.notes,
                  "seconds": round(time.time() - start, 1)}
        write_json_atomic(tmp / "conversion.json", report)
        write_text_atomic(tmp / "conversion.log", "\n".join(
            [f"converted {source} -> {target.name}: {len(conversion.train)} labelled, {len(conversion.test)} test cases",
             *conversion.notes]) + "\n")
    for note in conversion.notes:
        log(f"note: {note}")
    log(f"wrote {len(conversion.train)} labelled and {len(conversion.test)} test cases to {target}")
    return target


def case_number(text: str) -> str:
    """The digits of a file or folder name (`img0001.nii.gz` -> `0001`)."""
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits:
        raise UserError(f"{text}: no case number in the name")
    return digits


def refuse_orphan_labels(folder: Path, used: list[CaseSpec], kept=lambda label: False) -> None:
    """Refuse a label map in `folder` that no case uses: its image is missing (a partial download or
    copy), and converting without it would drop a labelled case without a word. `kept(label)` names
    labels a converter leaves out on purpose (AMOS's MRI cases)."""
    if not Path(folder).is_dir():
        return
    in_use = {case.label.resolve() for case in used if case.label is not None}
    for label in nifti_files(folder):
        if label.resolve() not in in_use and not kept(label):
            raise UserError(f"{label}: a label map whose image is missing; restore the image or remove the label")


def nifti_files(folder: Path, prefix: str = "") -> list[Path]:
    return sorted(p for p in Path(folder).iterdir()
                  if p.name.startswith(prefix) and p.name.lower().endswith((".nii.gz", ".nii")) and not p.name.startswith("."))


def strip_nifti(name: str) -> str:
    for ending in (".nii.gz", ".nii"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name
