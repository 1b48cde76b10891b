"""The ground-truth volume: reading it, the pretraining window, cropping, and simulated projections.

A VOLUME is either
  - a CT image SimpleITK reads (NIfTI, MHA, NRRD) in Hounsfield units: resampled linearly to the
    pretraining spacing (1.5 mm isotropic by default) and windowed as in pretraining,
    clip(HU, -175, 250) then (HU + 175) / 425 -> [0, 1]; or
  - a preprocessed case (`<case>.b2nd` written by `medgmae_plan_and_preprocess`), which is already
    at 1.5 mm and in [0, 1].
Arrays are [D, H, W] (z, y, x), float32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgmae_plans.configurations import DEFAULT_CONFIGURATION, geometry
from medgmae_plans.constants import window_hu
from medgmae_plans.runtime import UserError

# the spacing the paper's pretraining (and so the zero-shot decoder initialisation) saw
PRETRAIN_SPACING = geometry(DEFAULT_CONFIGURATION).spacing_mm


def load_volume(path: str | Path, spacing: float = PRETRAIN_SPACING) -> tuple[np.ndarray, tuple[float, ...]]:
    """(volume [D, H, W] float32 in [0, 1], spacing (z, y, x) in mm). Bad files raise `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.name.endswith("_seg.b2nd"):
        raise UserError(f"{path}: a preprocessed label map, not a CT; give the case's image ({path.name[:-9]}.b2nd)")
    if path.name.endswith(".b2nd"):
        return _load_preprocessed(path)
    import SimpleITK as sitk

    from preprocessing.validate import check_ct_image, read_image

    image = read_image(path)
    # preprocessing's check: 3D, one component, and NaN counted on the stored values (SimpleITK
    # reads a float NIfTI's NaN as 0, which would be reconstructed as water)
    check_ct_image(image, path)
    image = _resample(sitk.Cast(image, sitk.sitkFloat32), spacing)
    return window_hu(sitk.GetArrayFromImage(image)), (spacing,) * 3  # [z, y, x]


def _resample(image, spacing: float):
    import SimpleITK as sitk

    old_sp, old_size = np.array(image.GetSpacing()), np.array(image.GetSize())
    size = [max(1, int(round(n))) for n in old_size * old_sp / spacing]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing,) * 3,
                         image.GetDirection(), -1024.0, sitk.sitkFloat32)


def _load_preprocessed(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import blosc2

    try:
        arr = np.asarray(blosc2.open(urlpath=str(path), mode="r")[:], dtype=np.float32)
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: cannot be read as a preprocessed case ({err})") from None
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise UserError(f"{path}: expected a single-channel preprocessed case [1, D, H, W], got {arr.shape}")
    spacing = (PRETRAIN_SPACING,) * 3
    pkl = path.with_suffix(".pkl")
    if not pkl.is_file():  # its spacing is its plan's (1.5 or 3 mm), written there only
        raise UserError(f"{path}: its properties file {pkl.name} is missing (it holds the case's spacing); "
                        "rerun medgmae_plan_and_preprocess with --clean")
    if pkl.is_file():
        from medgmae_plans.runtime.safe_load import load_pickle

        properties = load_pickle(pkl)  # plain data only: a planted pickle runs nothing
        spacing = tuple(float(s) for s in (properties.get("spacing_after_resampling", spacing)
                                           if isinstance(properties, dict) else spacing))
    return arr[0], spacing


def center_crop(volume: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """The central box of `size` (D, H, W); axes shorter than asked are kept whole."""
    if size is None:
        return volume
    starts = [max(0, (n - k) // 2) for n, k in zip(volume.shape, size)]
    return np.ascontiguousarray(volume[tuple(slice(s, s + k) for s, k in zip(starts, size))])


def simulate_projections(projector, volume: torch.Tensor, photons: float = 0.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise-free line integrals, or with `photons` > 0 a Poisson transmission measurement.

    Noise model (Beer-Lambert): the line integrals p are scaled by k = 2 / max(p), so the most
    attenuating ray transmits e^-2 of the `photons` I0 of each ray; counts ~ Poisson(I0 e^{-k p})
    (at least 1), and the measurement is -log(counts / I0) / k, in the units of p.
    """
    with torch.no_grad():
        clean = projector(volume)
        if photons <= 0:
            return clean
        k = 2.0 / clean.max().clamp_min(1e-6)
        expected = photons * torch.exp(-k * clean)
        counts = torch.poisson(expected.double().cpu(), generator=generator).to(clean).clamp_min(1.0)
        return -torch.log(counts / photons) / k
