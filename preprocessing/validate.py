"""Checks that run before anything is written, so bad input fails with one line naming the file.

nnU-Net's own checks fail late (after workers started, sometimes after files were written) and
with assertions that do not say which case is wrong. These read every image and label once:

- `dataset.json` exists, parses, has one channel and it is CT, a background label, a file ending;
- every case has exactly one channel file (`_0000`) and a label;
- each file is complete (`check_complete`: gzip CRC and length, NIfTI data as long as its header)
  and opens as a 3D, single-component image with finite voxels;
- each label has its image's geometry (size, spacing, origin, direction) and only declared labels.

Only SimpleITK and numpy are imported, so the checks can run in cheap worker processes.
"""
from __future__ import annotations

import json
import math
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from medgmae_plans.runtime.atomic import disk_full_error
from medgmae_plans.runtime import UserError

SPACING_RTOL = 1e-3
ORIGIN_ATOL_MM = 0.05
DIRECTION_ATOL = 1e-3


def load_dataset_json(raw_folder: Path) -> dict:
    """The raw dataset's `dataset.json`, checked for what a CT-only MedGMAE plan needs."""
    path = Path(raw_folder) / "dataset.json"
    if not path.is_file():
        raise UserError(f"{path}: missing (every nnU-Net raw dataset needs a dataset.json)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise UserError(f"{path}: no 'channel_names'")
    if len(channels) != 1 or str(next(iter(channels.values()))).strip().lower() != "ct":
        raise UserError(f"{path}: MedGMAE plans need exactly one CT channel, found channel_names {channels}")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise UserError(f"{path}: 'labels' must map names to ids and include background: 0")
    if "regions_class_order" in meta:
        raise UserError(f"{path}: region-based labels are not supported by MedGMAE plans")
    if not meta.get("file_ending"):
        raise UserError(f"{path}: no 'file_ending'")
    return meta


def list_cases(raw_folder: Path, meta: dict, subfolder: str = "imagesTr", labels: str | None = "labelsTr") -> dict:
    """`{case_id: {"images": [path], "label": path or None}}`, refusing extra channels and missing labels."""
    raw_folder = Path(raw_folder)
    ending = meta["file_ending"]
    folder = raw_folder / subfolder
    if not folder.is_dir():
        raise UserError(f"{folder}: missing")
    channel = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: dict[str, dict] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        match = channel.match(path.name)
        if not match:
            raise UserError(f"{path}: image names must end in _0000{ending} (nnU-Net's channel suffix)")
        if match.group(2) != "0000":
            raise UserError(f"{path}: a second channel ({match.group(2)}); MedGMAE plans take CT only (_0000)")
        label = None
        if labels is not None:
            label = raw_folder / labels / f"{match.group(1)}{ending}"
            if not label.is_file():
                raise UserError(f"{label}: missing (label of {path.name})")
        cases[match.group(1)] = {"images": [str(path)], "label": None if label is None else str(label)}
    if not cases:
        raise UserError(f"{folder}: no images ending in _0000{ending}")
    if labels is not None and (raw_folder / labels).is_dir():  # a label whose image is missing was ignored silently
        orphans = sorted(p for p in (raw_folder / labels).iterdir() if p.name.endswith(ending)
                         and not p.name.startswith(".") and p.name[:-len(ending)] not in cases)
        if orphans:
            raise UserError(f"{orphans[0]}: a label without its image ({folder / (orphans[0].name[:-len(ending)] + '_0000' + ending)} "
                            f"is missing){f'; {len(orphans) - 1} more' if len(orphans) > 1 else ''}")
    declared = meta.get("numTraining")
    if labels is not None and declared is not None and int(declared) != len(cases):
        raise UserError(f"{raw_folder / 'dataset.json'}: numTraining is {declared} but {folder} has {len(cases)} cases")
    return cases


_NIFTI_ENDINGS = (".nii", ".nii.gz")
_CHUNK = 1 << 22


def _gzip_contents(path: Path) -> tuple[int, bytes]:
    """(uncompressed length, first bytes) of a gzip file, reading the whole stream.

    Python's gzip checks each member's CRC-32 and length trailer at its end, so a cut or
    corrupted stream raises here; SimpleITK's NIfTI reader stops decompressing once it has the
    voxels it wants and never sees either.
    """
    import gzip
    import zlib

    length, head = 0, b""
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                if not head:
                    head = chunk[:1024]
                length += len(chunk)
    except (EOFError, OSError, zlib.error) as err:  # BadGzipFile is an OSError
        raise UserError(f"{path}: cannot be read: corrupt or truncated gzip stream ({err})") from None
    return length, head


def _nifti_data_end(head: bytes, path: Path) -> int:
    """The byte offset where a NIfTI-1/-2 file's voxels end, from its header, refusing a header
    spacing (pixdim) that is not positive: SimpleITK silently reads a 0 as 1 mm."""
    import struct

    for order in "<>":
        header_size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if header_size == 348 and len(head) >= 348:   # NIfTI-1
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            pixdim = struct.unpack(order + "8f", head[76:108])
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if header_size == 540 and len(head) >= 540:   # NIfTI-2
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            pixdim = struct.unpack(order + "8d", head[104:168])
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        raise UserError(f"{path}: cannot be read: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    if not 1 <= dims[0] <= 7 or any(n < 1 for n in dims[1:dims[0] + 1]) or bitpix < 1:
        raise UserError(f"{path}: NIfTI header has dimensions {list(dims[1:max(1, min(dims[0], 7)) + 1])}, "
                        f"{bitpix} bits per voxel")
    spacing = pixdim[1:min(dims[0], 3) + 1]
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise UserError(f"{path}: header spacing (pixdim) {[float(v) for v in spacing]} mm: every spacing must be "
                        "a positive number")
    # voxels never start inside the header and its 4-byte extension flag
    return max(offset, header_size + 4) + int(np.prod(dims[1:dims[0] + 1], dtype=np.int64)) * bitpix // 8


def check_complete(path: str | Path) -> None:
    """Read `path` to its end and fail (`UserError`) on a short or corrupt file.

    Needed before any SimpleITK read of NIfTI: its reader fills the voxels missing from a cut file
    with 0 and accepts it, so a half-copied CT would be planned, converted and evaluated as air
    and water. A `.gz` stream is read whole (CRC and length trailer checked) and a NIfTI's data
    must be as long as its header says. MHA/MHD/NRRD need nothing here: SimpleITK's readers for
    those fail on missing data themselves. DICOM series are checked slice by slice where they are
    listed (`image_sources`).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    if size == 0:
        raise UserError(f"{path}: cannot be read: empty file (0 bytes)")
    name = path.name.lower()
    if name.endswith(".gz"):
        length, head = _gzip_contents(path)
    elif name.endswith(_NIFTI_ENDINGS):
        length = size
        with open(path, "rb") as f:
            head = f.read(1024)
    else:
        return
    if name.endswith(_NIFTI_ENDINGS):
        end = _nifti_data_end(head, path)
        if length < end:
            raise UserError(f"{path}: cannot be read: truncated, {length} bytes of NIfTI data where its header needs {end}")


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """`sitk.WriteImage`, then the written file checked whole (`check_complete`).

    On a full disk SimpleITK's NIfTI writer prints "wrote only 0 of N bytes" and returns as if the
    file were written, leaving a cut file that the next command would read as zeros.
    """
    sitk.WriteImage(image, str(path), useCompression=compress)
    try:
        check_complete(path)
    except UserError as err:
        raise disk_full_error(path, RuntimeError(str(err))) or \
            UserError(f"{path}: written incompletely; is its device full or failing?") from None


def read_image(path: str | Path) -> sitk.Image:
    """Read one whole image (`check_complete`), turning reader failures into a one-line `UserError`."""
    check_complete(path)
    check_nifti_geometry(path)  # before SimpleITK, which reads a contradicting header with a warning only
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines() if "ERROR" in line or "rror" in line), "")
        raise UserError(f"{path}: cannot be read as an image ({first or 'unreadable'})") from None
    check_direction(image, path)
    return image


# the header's spacing (pixdim) against the spacing its sform implies: the same within 1 % (float32
# headers written by any tool agree to 1e-6; nibabel writes 1 mm against 2.5 mm when given a zero spacing)
HEADER_SPACING_RTOL = 1e-2


def check_nifti_geometry(path: str | Path) -> None:
    """A NIfTI header that contradicts itself is refused: the sform's voxel sizes against pixdim (SimpleITK
    takes pixdim's spacing and the sform's direction), and a sheared (non-orthogonal) sform. Other
    formats: nothing to do here (their direction is checked on the image read, `check_direction`)."""
    if not str(path).lower().endswith(_NIFTI_ENDINGS):
        return
    import nibabel

    try:
        header = nibabel.load(str(path)).header
        sform, code = header.get_sform(coded=True)
        zooms = [float(z) for z in header.get_zooms()[:3]]
    except Exception as err:  # nibabel's many kinds for a header it cannot parse: SimpleITK says it next
        del err
        return
    if not code or sform is None or len(zooms) < 3:
        return  # the qform is built from pixdim itself: nothing to contradict
    axes = np.asarray(sform, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(axes, axis=0)
    if not np.allclose(sizes, zooms, rtol=HEADER_SPACING_RTOL, atol=0):
        raise UserError(f"{path}: the NIfTI header contradicts itself: pixdim says spacing "
                        f"{[round(z, 4) for z in zooms]} mm, its sform {[round(float(s), 4) for s in sizes]} mm")
    _check_orthonormal(axes / np.where(sizes > 0, sizes, 1), path, "sform")


def _check_orthonormal(matrix: np.ndarray, path, what: str) -> None:
    gram = matrix.T @ matrix
    if not np.allclose(gram, np.eye(len(gram)), rtol=0, atol=DIRECTION_ATOL):
        raise UserError(f"{path}: the {what} direction matrix is not orthonormal (sheared or scaled axes, "
                        f"largest deviation {float(np.abs(gram - np.eye(len(gram))).max()):.3g}); "
                        "resample it onto an orthonormal grid first")


def check_direction(image: sitk.Image, path: str | Path) -> None:
    """The image's direction matrix is orthonormal (MHA and NRRD keep a sheared one as it is written)."""
    n = image.GetDimension()
    _check_orthonormal(np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n), path, "image's")


def _nifti_non_finite(path: str | Path) -> int:
    """Non-finite voxels of a float NIfTI file, counted on the stored values.

    SimpleITK's NIfTI reader (and so nnU-Net, which reads through it) returns NaN voxels as 0,
    silently turning them into water; nibabel reads the stored values.
    """
    import nibabel

    voxels = np.asarray(nibabel.load(str(path)).dataobj)
    return int(np.count_nonzero(~np.isfinite(voxels))) if np.issubdtype(voxels.dtype, np.floating) else 0


# 8-bit (and 1-bit, which SimpleITK reads as 8-bit) voxels cannot be HU: a 0..255 CT would be windowed as if
# it were (air becoming 0.41). A NIfTI's scl_slope/scl_inter rescale comes back as floats and passes.
CT_PIXEL_TYPES_REFUSED = (sitk.sitkUInt8, sitk.sitkInt8)


def check_ct_image(image: sitk.Image, path: str | Path) -> np.ndarray:
    """Check one CT image (3D, one component, a pixel type that holds HU, finite voxels); return its
    voxels [z, y, x]."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        "a CT image has one channel")
    if image.GetDimension() != 3:
        raise UserError(f"{path}: a {image.GetDimension()}D image; MedGMAE needs 3D CT volumes")
    if image.GetPixelID() in CT_PIXEL_TYPES_REFUSED:
        raise UserError(f"{path}: pixel type {image.GetPixelIDTypeAsString()} cannot hold CT in HU (-1024..3071); "
                        "store the CT as 16-bit integers or floats in HU")
    voxels = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(voxels.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(voxels)))
        if not bad and str(path).lower().endswith((".nii", ".nii.gz")):
            bad = _nifti_non_finite(path)
        if bad:
            raise UserError(f"{path}: {bad} voxels are NaN or infinite")
    return voxels


def _same_geometry(a: sitk.Image, b: sitk.Image) -> str | None:
    if a.GetSize() != b.GetSize():
        return f"size {b.GetSize()} differs from the image's {a.GetSize()}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=SPACING_RTOL, atol=0):
        return f"spacing {b.GetSpacing()} differs from the image's {a.GetSpacing()}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=ORIGIN_ATOL_MM):
        return f"origin {b.GetOrigin()} differs from the image's {a.GetOrigin()}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        return "direction matrix differs from the image's"
    return None


def label_values(voxels: np.ndarray, path: str | Path) -> list[int]:
    """The distinct values of a label map, refusing non-integer or negative values."""
    if np.issubdtype(voxels.dtype, np.floating):
        if not np.all(np.isfinite(voxels)) or np.any(voxels != np.round(voxels)):
            raise UserError(f"{path}: label map has non-integer values")
    flat = voxels.ravel()
    if flat.size and flat.min() < 0:
        raise UserError(f"{path}: label map has negative values")
    if flat.size and flat.max() < 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(flat.astype(np.int64)))]
    return [int(v) for v in np.unique(flat)]


def check_case(case_id: str, images: Sequence[str], label: str | None, allowed: Sequence[int]) -> dict:
    """Read and check one case; returns its size and spacing (x, y, z as SimpleITK reports them)."""
    image = read_image(images[0])
    check_ct_image(image, images[0])
    summary = {"case": case_id, "size": list(image.GetSize()), "spacing": list(image.GetSpacing())}
    if label is None:
        return summary
    seg = read_image(label)
    if seg.GetNumberOfComponentsPerPixel() != 1 or seg.GetDimension() != 3:
        raise UserError(f"{label}: a label map must be a 3D single-component image")
    problem = _same_geometry(image, seg)
    if problem:
        raise UserError(f"{label}: {problem} ({images[0]})")
    unexpected = sorted(set(label_values(sitk.GetArrayViewFromImage(seg), label)) - set(allowed))
    if unexpected:
        raise UserError(f"{label}: label values {unexpected} are not declared in dataset.json")
    return summary


def run_jobs(jobs: Sequence[tuple], fn: Callable, num_processes: int,
               bar: Callable[[Iterable], Iterable] = lambda it: it) -> list:
    """Run `fn(*job)` for each job, in worker processes when `num_processes > 1`; first error wins."""
    if num_processes <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in bar(jobs)]
    # spawn: the parent may already hold threads (torch, blosc2), which fork does not copy safely
    with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        results = []
        for future in bar(futures):
            try:
                results.append(future.result())
            except BaseException:
                for other in futures:
                    other.cancel()
                raise
        return results


def check_dataset(raw_folder: Path, num_processes: int = 1, bar=lambda it: it) -> tuple[dict, dict]:
    """Check a whole raw dataset; returns (dataset.json, cases)."""
    meta = load_dataset_json(raw_folder)
    if "dataset" in meta:
        raise UserError(f"{Path(raw_folder) / 'dataset.json'}: a 'dataset' file list is not supported; "
                        "use the imagesTr/labelsTr layout")
    cases = list_cases(raw_folder, meta)
    allowed = [int(v) for v in meta["labels"].values()]
    jobs = [(case_id, files["images"], files["label"], allowed) for case_id, files in cases.items()]
    run_jobs(jobs, check_case, num_processes, bar)
    return meta, cases
