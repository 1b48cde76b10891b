"""Shared pieces of the bad-input catalogue (tests/test_bad_input.py): damaged files, the one-line
refusal contract, and small datasets built once per session and copied into each test's folders.

A refusal is checked as the README promises it: exit code 2, exactly one line on stderr naming the
file or argument, no traceback, and the output folders exactly as they were before (`snapshot`).
"""
from __future__ import annotations

import errno
import gzip
import json
import shutil
import struct
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from plan_support import REPO, make_phantom, run_module
from preprocessing.image_sources import keep_locale

DATASET = "Dataset990_AbdomenPhantom"
CASE_IMAGE = f"imagesTr/phantom_000_0000.nii.gz"
CASE_LABEL = f"labelsTr/phantom_000.nii.gz"


# ---------------------------------------------------------------- the refusal contract

def snapshot(*folders: Path) -> dict:
    """Every file under `folders` with its size and modification time (missing folders: nothing)."""
    state = {}
    for folder in folders:
        folder = Path(folder)
        if folder.exists():
            for path in sorted(folder.rglob("*")):
                stat = path.lstat()
                state[str(path)] = (path.is_dir(), stat.st_size if path.is_file() else 0,
                                    stat.st_mtime_ns if path.is_file() else 0)
    return state


def refused(capsys, main: Callable, argv: Sequence, *fragments: str, unchanged: Sequence[Path] = ()) -> str:
    """Run `main(argv)` in-process and check the refusal contract; returns the one stderr line."""
    before = snapshot(*unchanged)
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    assert snapshot(*unchanged) == before, "a refused run changed its output folder"
    return lines[0]


def console_script(name: str, args: Sequence, env_folders: dict):
    """The installed console script `name` (the wiring of the entry point), in a child process."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / name
    env = {**os.environ, **{k: str(v) for k, v in env_folders.items()}}
    return subprocess.run([str(script), *map(str, args)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------- damaging files

def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to `keep` of its bytes, as an interrupted copy leaves it."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])
    return path


def zero_bytes(path: Path) -> Path:
    Path(path).write_bytes(b"")
    return path


def rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], **image_changes) -> Path:
    """Rewrite an image with its voxels changed by `change` (and geometry changed by `image_changes`,
    e.g. spacing=...), keeping the rest of its geometry."""
    original = sitk.ReadImage(str(path))
    image = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(original)))
    if image.GetDimension() == original.GetDimension():
        image.CopyInformation(original)
    for key, value in image_changes.items():
        getattr(image, f"Set{key[0].upper()}{key[1:]}")(value)
    sitk.WriteImage(image, str(path), useCompression=str(path).endswith(".gz"))
    return path


def set_nifti_spacing(path: Path, axis: int, value: float) -> Path:
    """Write pixdim[axis + 1] straight into a NIfTI-1 header (nibabel and SimpleITK refuse to)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())
    offset = 76 + 4 * (axis + 1)
    data[offset:offset + 4] = struct.pack("<f", value)
    with opener(path, "wb") as f:
        f.write(bytes(data))
    return path


def write_ct(path: Path, voxels: np.ndarray, spacing=(2.0, 2.0, 2.0), compress: bool = True) -> Path:
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def small_ct(shape=(24, 24, 24), seed: int = 0, dtype=np.int16) -> np.ndarray:
    """Soft tissue with a few bright and dark boxes, in HU."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 20, shape)
    hu[4:10, 4:12, 6:14] = 300
    hu[12:20, 10:18, 2:8] = -900
    return hu.astype(dtype)


def write_dicom_series(folder: Path, voxels: np.ndarray, spacing_mm: float = 2.0) -> list[Path]:
    """One DICOM file per slice, one series."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    with keep_locale():  # ITK's GDCM writer sets the C locale and leaves it
        for k in range(voxels.shape[0]):
            slice_ = sitk.GetImageFromArray(voxels[k:k + 1].astype(np.int16))[:, :, 0]
            slice_.SetSpacing((spacing_mm, spacing_mm))
            for tag, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.1"), ("0020|0013", str(k)),
                               ("0020|0032", f"0\\0\\{k * spacing_mm}"), ("0008|0060", "CT"),
                               ("0018|0050", str(spacing_mm))):
                slice_.SetMetaData(tag, value)
            files.append(folder / f"slice_{k:03d}.dcm")
            writer.SetFileName(str(files[-1]))
            writer.Execute(slice_)
    return files


# ---------------------------------------------------------------- datasets, built once

def build_phantom(root: Path) -> Path:
    """A 2-case phantom raw dataset (3x the spacing, cropped): small enough for every test to copy."""
    return make_phantom(root / "nnUNet_raw", n_train=2, spacing_scale=3.0, box_mm=(120.0, 90.0, 90.0))


def build_preprocessed(root: Path) -> dict:
    """The phantom planned and preprocessed (3d_fullres), in a child process: nnU-Net reads its
    folders once per process, and the in-process tests each have their own."""
    folders = {var: root / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    if not (folders["nnUNet_raw"] / DATASET).exists():
        build_phantom(root)
    result = run_module("preprocessing.plan_and_preprocess", ["-d", "990", "-np", "1", "--no-pbar"], folders)
    assert result.returncode == 0, result.stderr
    return folders


def copy_into(source: Path, target: Path) -> Path:
    """Copy a dataset folder into a test's nnU-Net folder (each test damages its own copy)."""
    shutil.copytree(source, target / Path(source).name)
    return target / Path(source).name


def dataset_json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())
