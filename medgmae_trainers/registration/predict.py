"""Register the pairs of a split with a trained model and write what a user looks at.

    <out>/<moving>__<fixed>_warped.nii.gz       moving image warped onto the fixed grid (normalised, float32)
    <out>/<moving>__<fixed>_warped_seg.nii.gz   moving labels warped by nearest neighbour (int16)
    <out>/<moving>__<fixed>_ddf.nii.gz          the displacement as an ITK displacement field (mm, x y z components)
    <out>/<moving>__<fixed>.png                 fixed, moving, warped, deformation grid
    <out>/predict.json, predict.log             settings, pairs, timings

Every file is written atomically; the output geometry is the fixed image's.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path
from medgmae_plans.runtime import UserError, progress, write_run_json
from preprocessing.validate import write_image

from preprocessing.layouts.registration import RegistrationDataset, ddf_to_itk
from .inference import apply, register
from .plots import pair_png
from .trainer import load_trained


def _write(arr: np.ndarray, reference, path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    with atomic_path(path) as tmp:
        write_image(img, tmp)


def predict(model_path: Path, ds: RegistrationDataset, split: str, out: Path, device, *, pbar: bool = True,
            log=print) -> dict:
    import SimpleITK as sitk

    model, ckpt = load_trained(model_path, device)
    shape = tuple(ckpt["config"]["shape_zyx"])
    if shape != ds.shape:
        raise UserError(f"{model_path}: trained on volumes {shape} (z, y, x), {ds.root} has {ds.shape}")
    pairs = ds.pairs(split)
    if not pairs:
        raise UserError(f"{ds.path}: no {split} pairs")
    out.mkdir(parents=True, exist_ok=True)
    timings = []
    for pair in progress(pairs, enabled=pbar, desc=f"register {split}"):
        moving, fixed = ds.image(pair.moving), ds.image(pair.fixed)
        ref = sitk.ReadImage(str(ds.image_path(pair.fixed)))
        t0 = time.time()
        ddf = register(model, moving, fixed, device)
        timings.append(time.time() - t0)
        mseg = ds.label(pair.moving)
        warped, wseg = apply(ddf, moving, mseg)
        _write(warped.astype(np.float32), ref, out / f"{pair.name}_warped.nii.gz")
        if wseg is not None:
            _write(wseg.astype(np.int16), ref, out / f"{pair.name}_warped_seg.nii.gz")
        with atomic_path(out / f"{pair.name}_ddf.nii.gz") as tmp:
            write_image(ddf_to_itk(ddf, ref), tmp)
        pair_png(out / f"{pair.name}.png", fixed, moving, warped, ddf, ds.label(pair.fixed),
                 title=f"{pair.moving} -> {pair.fixed}")
    results = {"pairs": [{"moving": p.moving, "fixed": p.fixed, "flow": p.flow, "name": p.name} for p in pairs],
               "seconds_per_pair": round(float(np.mean(timings)), 3)}
    write_run_json(out, "predict", {"model": str(model_path), "dataset": str(ds.root), "split": split,
                                    "device": str(device)}, results)
    log(f"registered {len(pairs)} {split} pairs into {out} ({results['seconds_per_pair']} s per pair)")
    return results
