"""Helpers for the planning and conversion tests: small phantom datasets and CLI runs.

The phantom covers a whole abdomen; at the plans' fixed 1.5 mm that is ~10 M voxels a case, too
slow for the default test run. `make_phantom` crops every case to a central box (SimpleITK slicing
keeps the physical geometry), so a case is well under a million voxels after resampling.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from preprocessing.phantom import generate_dataset

REPO = Path(__file__).resolve().parents[1]


def crop_center(image: sitk.Image, box_mm) -> sitk.Image:
    size, spacing = image.GetSize(), image.GetSpacing()
    keep = [min(n, max(4, math.ceil(mm / s))) for n, s, mm in zip(size, spacing, box_mm)]
    start = [(n - k) // 2 for n, k in zip(size, keep)]
    return image[tuple(slice(b, b + k) for b, k in zip(start, keep))]


def crop_file(path: Path, box_mm) -> None:
    sitk.WriteImage(crop_center(sitk.ReadImage(str(path)), box_mm), str(path), useCompression=True)


def make_phantom(raw_root: Path, n_train: int, n_test: int = 0, n_unlabeled: int = 0, spacing_scale: float = 2.0,
                 box_mm=(150.0, 120.0, 120.0), dataset_id: int = 990) -> Path:
    """A phantom dataset under `raw_root`, every image and label cropped to the central `box_mm` (x, y, z)."""
    folder = generate_dataset(raw_root, n_train=n_train, n_test=n_test, n_unlabeled=n_unlabeled,
                              spacing_scale=spacing_scale, dataset_id=dataset_id, workers=1, pbar=False,
                              log=lambda *a, **k: None)
    if box_mm is not None:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled"):
            if (folder / sub).is_dir():
                for path in sorted((folder / sub).glob("*.nii.gz")):
                    crop_file(path, box_mm)
    return folder


def nnunet_folders(root: Path) -> dict[str, Path]:
    """nnU-Net's three folders, made under `root` (for module-scoped fixtures; `conftest.nnunet_env` is per test)."""
    env = {var: Path(root) / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in env.values():
        folder.mkdir()
    return env


def run_module(module: str, args, env_folders: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m module args` with the nnU-Net folders of a test (nnunetv2 reads them at import)."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in env_folders.items()})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
