"""Finding and reading the images of an unlabelled collection: NIfTI-like files or DICOM series.

A collection folder may mix both. Files with an image ending (`.nii.gz`, `.nii`, `.mha`, `.mhd`,
`.nrrd`) are one image each; any folder holding DICOM files contributes one image per series
(read with SimpleITK's GDCM series reader, which applies the rescale slope and intercept, so voxels
are HU). Case ids are the file names without ending and without nnU-Net's `_0000` channel suffix,
or the DICOM folder's path relative to the collection (with `_sN` when a folder holds several
series).

Every image is read in one canonical layout, the one nnU-Net's `SimpleITKIOWithReorient` gives the
labelled cases (`CANONICAL_ORIENTATION`, RAS): a scan stored with flipped or permuted axes reaches
pretraining as the same patient in the same voxel layout as fine-tuning sees it. The collection's
`dataset.json` records it (`orientation`), and each case's properties keep its stored orientation.
"""
from __future__ import annotations

import contextlib
import inspect
import locale
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgmae_plans.runtime import UserError
from .validate import check_ct_image, read_image

IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def _reorienting_readers_layout() -> str:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIOWithReorient

    return inspect.signature(SimpleITKIOWithReorient.read_images).parameters["orientation"].default


CANONICAL_ORIENTATION = _reorienting_readers_layout()  # "RAS"
_CHANNEL_SUFFIX = re.compile(r"_0000$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ImageSource:
    case_id: str
    path: str                      # the file, or the DICOM folder
    dicom_files: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.path if not self.dicom_files else f"{self.path} (DICOM series)"


def _image_ending(name: str) -> str | None:
    lower = name.lower()
    return next((e for e in IMAGE_ENDINGS if lower.endswith(e)), None)


@contextlib.contextmanager
def keep_locale():
    """Put the process's locale back after a GDCM call: ITK's GDCM reader and writer set the C locale
    and leave it, after which every later `open()` of the command decodes text as ASCII (a dataset.json
    or a log line with one accented letter would then fail)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _dicom_sources(folder: Path, root: Path) -> list[ImageSource]:
    with keep_locale():
        return _dicom_series(folder, root)


def _dicom_series(folder: Path, root: Path) -> list[ImageSource]:
    reader = sitk.ImageSeriesReader
    series_ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    rel = folder.relative_to(root).as_posix() if folder != root else folder.name
    base = _UNSAFE.sub("_", rel.replace("/", "_")).strip("_") or "series"
    sources, listed = [], set()
    for n, series in enumerate(sorted(series_ids)):
        files = tuple(reader.GetGDCMSeriesFileNames(str(folder), series))
        case_id = base if len(series_ids) == 1 else f"{base}_s{n}"
        sources.append(ImageSource(case_id, str(folder), files))
        listed.update(Path(f).resolve() for f in files)
    # GDCM leaves a slice it cannot parse (a cut or damaged file) out of its series without a word,
    # and the series reader then fills the gap by interpolating the spacing: refuse such a slice.
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.resolve() not in listed and _is_dicom(path):
            raise UserError(f"{path}: DICOM slice cannot be read (truncated or damaged); its series would "
                            "be missing it")
    return sources


def _is_dicom(path: Path) -> bool:
    """Whether the file has the DICOM part-10 marker ("DICM" after the 128-byte preamble)."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def find_images(folder: Path) -> list[ImageSource]:
    """Every image in `folder` (recursively), sorted by case id; `UserError` when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    sources: list[ImageSource] = []
    dicom_folders: set[Path] = set()
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not path.is_file():
            continue
        ending = _image_ending(path.name)
        if ending:
            case_id = _CHANNEL_SUFFIX.sub("", path.name[: -len(ending)])
            sources.append(ImageSource(case_id, str(path)))
        elif path.suffix.lower() not in (".json", ".txt", ".csv", ".md", ".raw", ".zraw"):
            dicom_folders.add(path.parent)
    for dicom_folder in sorted(dicom_folders):
        sources.extend(_dicom_sources(dicom_folder, folder))
    if not sources:
        raise UserError(f"{folder}: no images found (looked for {', '.join(IMAGE_ENDINGS)} files and DICOM series)")
    seen: dict[str, str] = {}
    for source in sources:
        if source.case_id in seen:
            raise UserError(f"{source.describe()}: case id {source.case_id!r} is also used by {seen[source.case_id]}")
        seen[source.case_id] = source.describe()
    return sorted(sources, key=lambda s: s.case_id)


def read_source(source: ImageSource) -> tuple[sitk.Image, str]:
    """The image turned to `CANONICAL_ORIENTATION`, and the orientation it was stored in."""
    if not source.dicom_files:
        image = read_image(source.path)
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(list(source.dicom_files))
        try:
            with keep_locale():
                image = reader.Execute()
        except RuntimeError:
            raise UserError(f"{source.describe()}: cannot be read as a DICOM series") from None
    stored = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION), stored


def load_ct(source: ImageSource) -> tuple[np.ndarray, dict]:
    """Voxels `[1, z, y, x]` float32 in `CANONICAL_ORIENTATION` and properties in the layout of nnU-Net's
    `SimpleITKIOWithReorient`."""
    image, stored = read_source(source)
    voxels = check_ct_image(image, source.describe())
    properties = {
        "sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                       "direction": image.GetDirection(), "original_orientation": stored},
        "spacing": [abs(float(s)) for s in image.GetSpacing()[::-1]],
    }
    return voxels.astype(np.float32)[None], properties


def source_geometry(source: ImageSource) -> tuple[list[float], list[int]]:
    """Spacing and shape (z, y, x) for planning, from a whole read of the image, checked as
    `load_ct` checks it: every image passes before anything of the collection is written."""
    image, _ = read_source(source)
    check_ct_image(image, source.describe())
    return [abs(float(s)) for s in image.GetSpacing()[::-1]], [int(n) for n in image.GetSize()[::-1]]
