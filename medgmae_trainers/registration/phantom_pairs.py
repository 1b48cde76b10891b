"""The embedded default data: registration pairs built from the synthetic abdominal CT phantom.

    $nnUNet_raw/Registration_Phantom/        (the layout of dataset.py)
        images/sub000.nii.gz ...             HU, int16, on one common grid
        labels/sub000.nii.gz ...             AMOS ids (spleen 1 ... prostate/uterus 15)
        images/sub010_def.nii.gz ...         sub010 warped by a known smooth random deformation
        flows/sub010__sub010_def.nii.gz      that deformation (ITK displacement field, mm)

Subjects are phantom cases `case_spec(seed, "train", i)` (the same patients as the phantom
dataset's training cases, i < n) rendered directly at a coarse isotropic spacing without flips and
cropped or padded (air) to one box in the phantom's body coordinates, so different subjects differ
in shape, size and organ position but share a field of view. Defaults: 6 mm, 32 x 48 x 64 voxels
(z, y, x) = 192 x 288 x 384 mm, z from -170 mm (upper abdomen; pelvis cases are cut at the box),
small enough to train on two CPU cores.

Pairs:
- train: every ordered pair of the `n_train` training subjects (inter-subject);
- val / test: inter-subject pairs of their own subjects (a cycle: s0->s1, s1->s2, ..., sN->s0) plus,
  for every subject, the subject (moving) against itself warped by a known deformation (fixed),
  whose true displacement is stored so the endpoint error can be reported.
  Known deformations: smooth random fields with at most `max_disp_mm`, with positive Jacobian.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medgmae_plans.runtime.atomic import atomic_directory, write_json_atomic, write_text_atomic
from medgmae_plans.constants import HU_WINDOW
from medgmae_plans.runtime import UserError, progress
from preprocessing.validate import write_image

from preprocessing.layouts.registration import DESCRIPTION, FORMAT, PREFIX, ddf_to_itk
from .metrics import jacobian_determinant
from .warping import random_smooth_ddf, warp_image, warp_labels

NAME = "Phantom"
VERSION = 2  # bump when what a seed produces changes (2: phantom generator version 3)
DEFAULTS = dict(n_train=10, n_val=3, n_test=4, seed=0, spacing_mm=6.0, shape_zyx=(32, 48, 64),
                box_lo_zyx=(-170.0, -144.0, -192.0), max_disp_mm=15.0)
AIR_HU = -1000


def render_subject(seed: int, index: int, spacing_mm: float, shape_zyx, box_lo_zyx) -> tuple[np.ndarray, np.ndarray]:
    """(HU int16, labels uint8), both [z, y, x] on the box grid, for phantom training case `index`."""
    from preprocessing.phantom import case_spec
    from preprocessing.phantom.render import render_case

    spec, noise_seed = case_spec(seed, "train", index)
    spec = replace(spec, spacing=(spacing_mm,) * 3, flips=(False, False, False))
    case = render_case(spec, noise_seed)
    hu = np.full(shape_zyx, AIR_HU, np.int16)
    lab = np.zeros(shape_zyx, np.uint8)
    src, dst = [], []
    for n_box, n_case, lo_box, lo_case in zip(shape_zyx, case.hu.shape, box_lo_zyx, case.origin):
        off = int(round((lo_case - lo_box) / spacing_mm))  # box index of the case's voxel 0
        b0, b1 = max(0, off), min(n_box, off + n_case)
        if b1 <= b0:
            raise ValueError(f"phantom case {index} does not overlap the registration box")
        dst.append(slice(b0, b1))
        src.append(slice(b0 - off, b1 - off))
    hu[tuple(dst)] = case.hu[tuple(src)]
    lab[tuple(dst)] = case.label[tuple(src)]
    return hu, lab


def known_deformation(hu: np.ndarray, lab: np.ndarray, rng: np.random.Generator, max_disp_vox: float):
    """(warped HU, warped labels, ddf [3, z, y, x] voxels): fixed = moving ∘ (x + u), fold-free."""
    for _ in range(20):
        ddf = random_smooth_ddf(hu.shape, rng, max_disp=max_disp_vox)
        if jacobian_determinant(ddf[0].numpy()).min() > 0.2:
            break
    else:  # pragma: no cover - with these amplitudes the first draw is fold-free
        raise RuntimeError("could not draw a fold-free deformation")
    moving = torch.from_numpy(hu.astype(np.float32))[None, None]
    warped = warp_image(moving, ddf)[0, 0].numpy()
    warped = warped + rng.normal(0.0, 10.0, warped.shape)  # fresh scanner noise: not a pixel copy
    labels = warp_labels(torch.from_numpy(lab.astype(np.int64))[None, None], ddf)[0, 0].numpy()
    return np.round(warped).astype(np.int16), labels.astype(np.uint8), ddf[0].numpy()


def build_phantom_pairs(raw_root: Path, *, pbar: bool = True, log=print, **overrides) -> Path:
    """Write (or reuse) `raw_root/Registration_Phantom`; returns its folder."""
    import SimpleITK as sitk

    from preprocessing.labels import AMOS_LABELS

    settings = {**DEFAULTS, **overrides, "version": VERSION}
    settings["shape_zyx"] = [int(v) for v in settings["shape_zyx"]]
    settings["box_lo_zyx"] = [float(v) for v in settings["box_lo_zyx"]]
    target = Path(raw_root) / (PREFIX + NAME)
    manifest = target / "phantom_pairs.json"
    if manifest.is_file():
        import json

        if json.loads(manifest.read_text()).get("settings") == settings:
            log(f"{target} already holds these phantom pairs; reusing it")
            return target
        raise UserError(f"{target} exists with other settings ({manifest}); remove it or pass another nnUNet_raw")
    if target.exists():
        raise UserError(f"{target} exists but has no {manifest.name}; remove it first")

    s = settings
    sp, shape = float(s["spacing_mm"]), tuple(s["shape_zyx"])
    n_all = s["n_train"] + s["n_val"] + s["n_test"]
    if s["n_train"] < 2 or s["n_val"] < 2 or s["n_test"] < 2:
        raise UserError("phantom pairs need at least 2 subjects in each of train, val and test")
    names = [f"sub{i:03d}" for i in range(n_all)]
    split_of = (["train"] * s["n_train"]) + (["val"] * s["n_val"]) + (["test"] * s["n_test"])
    origin_xyz = tuple(reversed(s["box_lo_zyx"]))
    start = time.time()

    def to_image(arr: np.ndarray):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((sp, sp, sp))
        img.SetOrigin(origin_xyz)
        return img

    cases, val, test, rows = {}, [], [], []
    with atomic_directory(target) as tmp:
        for sub in ("images", "labels", "flows"):
            (tmp / sub).mkdir()

        def write_case(name, hu, lab):
            write_image(to_image(hu), tmp / "images" / f"{name}.nii.gz")
            write_image(to_image(lab), tmp / "labels" / f"{name}.nii.gz")
            cases[name] = {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"}

        for i, name in enumerate(progress(names, enabled=pbar, desc="phantom subjects")):
            hu, lab = render_subject(s["seed"], i, sp, shape, s["box_lo_zyx"])
            write_case(name, hu, lab)
            rows.append(f"{name}  {split_of[i]:5s}  organs {sorted(int(v) for v in np.unique(lab) if v)}")
            if split_of[i] == "train":
                continue
            rng = np.random.default_rng([s["seed"], 7919, i])
            w_hu, w_lab, ddf = known_deformation(hu, lab, rng, s["max_disp_mm"] / sp)
            fixed = f"{name}_def"
            write_case(fixed, w_hu, w_lab)
            flow = f"flows/{name}__{fixed}.nii.gz"
            write_image(ddf_to_itk(ddf, to_image(hu)), tmp / flow)
            (val if split_of[i] == "val" else test).append({"moving": name, "fixed": fixed, "flow": flow})
        for split, pairs in (("val", val), ("test", test)):
            subs = [n for n, sp_ in zip(names, split_of) if sp_ == split]
            cycle = [{"moving": a, "fixed": b} for a, b in zip(subs, subs[1:] + subs[:1])]
            pairs[:0] = cycle
        desc = {
            "format": FORMAT, "name": NAME, "modality": "CT",
            "source": f"medgmae phantom (preprocessing.phantom), seed {s['seed']}, {sp:g} mm",
            "shape_zyx": list(shape), "spacing_zyx": [sp] * 3,
            "intensity": {"scheme": "ct_window", "window": list(HU_WINDOW)},
            "labels": {str(v): k for k, v in AMOS_LABELS.items() if v},
            "cases": cases,
            "train": {"mode": "all_pairs", "cases": [n for n, sp_ in zip(names, split_of) if sp_ == "train"]},
            "val": val, "test": test,
        }
        write_json_atomic(tmp / DESCRIPTION, desc)
        elapsed = time.time() - start
        write_json_atomic(tmp / manifest.name, {"settings": settings, "results": {"seconds": round(elapsed, 1),
                                                                                  "cases": len(cases)}})
        write_text_atomic(tmp / "phantom_pairs.log", "\n".join(rows) + f"\n{len(cases)} cases in {elapsed:.1f} s\n")
    log(f"wrote {len(cases)} phantom registration cases to {target} in {elapsed:.1f} s")
    return target
