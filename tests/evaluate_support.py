"""Fabricated evaluation inputs: small label maps, reference/prediction folders and nnU-Net results
folders of fine-tuning runs with the layout of the fine-tuning/evaluation contract."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgmae_plans.constants import INIT_DISPLAY

DATASET = "Dataset990_AbdomenPhantom"
LABELS = {"background": 0, "spleen": 1, "liver": 2, "kidney": 3}
SHAPE = (20, 24, 28)          # z, y, x
SPACING = (0.8, 0.9, 2.0)     # x, y, z mm (anisotropic, like CT)


def write_label_map(path: Path, array: np.ndarray, spacing=SPACING, origin=(-10.0, 5.0, 30.0),
                    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def reference_case(seed: int, with_kidney: bool = True) -> np.ndarray:
    """Three box-and-ball organs at seeded positions; the kidney (3) can be left out."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(SHAPE, np.uint8)
    z, y, x = np.indices(SHAPE)
    c = rng.integers([6, 7, 7], [9, 10, 11])
    ref[(z - c[0]) ** 2 / 16 + (y - c[1]) ** 2 / 25 + (x - c[2]) ** 2 / 25 <= 1] = 1
    z0, y0 = rng.integers(9, 12), rng.integers(10, 13)
    ref[z0:z0 + 7, y0:y0 + 9, 14:25] = 2
    if with_kidney:
        ref[3:8, 17:22, 20:26] = 3
    return ref


def perturb(ref: np.ndarray, seed: int, amount: float) -> np.ndarray:
    """A prediction: the reference shifted by a voxel in places and with `amount` of voxels relabelled."""
    rng = np.random.default_rng(seed)
    pred = np.roll(ref, int(rng.integers(-1, 2)), axis=2).copy()
    flip = rng.random(ref.shape) < amount
    pred[flip] = rng.integers(0, 4, size=int(flip.sum()))
    return pred


def write_dataset_json(path: Path, labels=None) -> Path:
    data = {"channel_names": {"0": "CT"}, "labels": labels or LABELS, "numTraining": 6, "file_ending": ".nii.gz"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def make_gt(preprocessed: Path, cases: dict[str, np.ndarray], raw: Path | None = None) -> Path:
    """nnU-Net's gt_segmentations (and, if `raw` is given, raw CT images for the overlays)."""
    folder = preprocessed / DATASET / "gt_segmentations"
    for case, ref in cases.items():
        write_label_map(folder / f"{case}.nii.gz", ref)
        if raw is not None:
            ct = np.where(ref > 0, 60 + 20 * ref, -100).astype(np.int16)
            image = sitk.GetImageFromArray(ct)
            image.SetSpacing(SPACING)
            image.SetOrigin((-10.0, 5.0, 30.0))
            (raw / DATASET / "imagesTr").mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(raw / DATASET / "imagesTr" / f"{case}_0000.nii.gz"))
    write_dataset_json(preprocessed / DATASET / "dataset.json")
    return folder


def fraction_tag(fraction: float) -> str:
    return "f" + f"{fraction * 100:g}".replace(".", "p")


def make_run(results: Path, init: str, fraction: float, fold: int, predictions: dict[str, np.ndarray],
             val_cases=None, finished: bool = True, tag: str | None = None) -> Path:
    """A fold folder of a fine-tuning run: medgmae_finetune.json, validation/*.nii.gz, dataset.json above;
    `tag` ends the trainer name (a replicate's r0, r1, ...)."""
    trainer = f"MedGMAETrainer_{init}_{fraction_tag(fraction)}" + (f"_{tag}" if tag else "")
    trainer_dir = results / DATASET / f"{trainer}__MedGMAEPlans__3d_fullres"
    fold_dir = trainer_dir / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_json(trainer_dir / "dataset.json")
    meta = {"dataset": DATASET, "configuration": "3d_fullres", "plans": "MedGMAEPlans", "fold": fold,
            "trainer": trainer, "init": init, "init_display": INIT_DISPLAY[init],
            "pretrained_checkpoint": None if init == "scratch" else "/abs/checkpoint_final.pt",
            "preset": "tiny", "patch_size": 16, "fraction": fraction, "train_cases": ["x"],
            "val_cases": list(val_cases if val_cases is not None else predictions), "epochs": 2,
            "iterations_per_epoch": 2}
    (fold_dir / "medgmae_finetune.json").write_text(json.dumps(meta, indent=2))
    if finished:
        for case, pred in predictions.items():
            write_label_map(fold_dir / "validation" / f"{case}.nii.gz", pred)
    return fold_dir
