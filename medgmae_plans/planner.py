"""`MedGMAEPlanner`: nnU-Net's `ExperimentPlanner` with the paper's fixed preprocessing.

What it changes against nnU-Net's default plans (everything else is nnU-Net's):

- plans name `MedGMAEPlans`, with the configurations of `medgmae_plans.configurations`: `3d_fullres`
  (1.5 mm, 96^3, the paper's) and `3d_lowres` (3 mm, 48^3, for CPUs); each planned on request, and
  planning one keeps the others already in the file;
- isotropic target spacing, no transpose;
- CT normalisation with a fixed window: nnU-Net's stock `CTNormalization` computes
  `(clip(x, p0.5, p99.5) - mean) / std`; the plans carry `p0.5 = mean = -175`, `p99.5 = 250`,
  `std = 425`, which is exactly `(clip(HU, -175, 250) + 175) / 425`. nnU-Net's predictor reads the same
  numbers from the plans, so inference reproduces training-time intensities;
- linear rather than cubic image resampling (z too): values stay inside [0, 1] (cubic overshoots),
  and it is cheaper. The choice is recorded in the plans, so the predictor resamples the same way;
- the configuration's cubic patch, batch size 2, and an `architecture` block naming the UNETR builder.

The architecture block: nnU-Net instantiates `network_class_name(input_channels=..., num_classes=...,
**arch_kwargs)` (plus `deep_supervision=...` when a trainer asks), so `build_unetr` takes exactly
those keywords. `arch_kwargs` are the MONAI UNETR settings of the paper's ViT-B fine-tuning
(token patch 16^3 over a 96^3 crop; 12^3 is the other size the paper uses), with the token patch
of the configuration (8^3 over 48^3 for `3d_lowres`).

Importing this module imports nnunetv2, which reads its folder variables at import time:
call `medgmae_plans.runtime.paths.ensure_nnunet_env()` first.
"""
from __future__ import annotations

import shutil
from copy import deepcopy
from pathlib import Path
from typing import Sequence

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from .runtime.atomic import atomic_path, write_json_atomic
from .constants import HU_WINDOW
from .configurations import DEFAULT_CONFIGURATION, PLANS_NAME, VIT_B, Geometry, geometry

BATCH_SIZE = 2

# Fed to nnU-Net's CTNormalization in place of the fingerprint's foreground statistics.
WINDOW_INTENSITY_PROPERTIES = {
    "mean": HU_WINDOW[0],
    "std": HU_WINDOW[1] - HU_WINDOW[0],
    "percentile_00_5": HU_WINDOW[0],
    "percentile_99_5": HU_WINDOW[1],
    "median": (HU_WINDOW[0] + HU_WINDOW[1]) / 2,
    "min": HU_WINDOW[0],
    "max": HU_WINDOW[1],
}

# The paper's ViT-B UNETR (`configurations.VIT_B` in MONAI's keywords); `unetr_architecture` puts in the
# configuration's patch and token patch.
UNETR_ARCH_KWARGS = {"hidden_size": VIT_B["embed_dim"], "mlp_dim": int(VIT_B["embed_dim"] * VIT_B["mlp_ratio"]),
                     "num_layers": VIT_B["depth"], "num_heads": VIT_B["num_heads"], "feature_size": 16,
                     "norm_name": "instance", "dropout_rate": 0.0}


def unetr_architecture(geo: Geometry) -> dict:
    return {"network_class_name": "medgmae_trainers.unetr.build_unetr",
            "arch_kwargs": {"img_size": geo.patch_size, "patch_size": geo.vit_patch, **UNETR_ARCH_KWARGS},
            "_kw_requires_import": []}


def configuration_block(geo: Geometry, median_shape: Sequence[float]) -> dict:
    """One configuration block of MedGMAE plans (shared by datasets and collections)."""
    return {
        "data_identifier": geo.data_identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": BATCH_SIZE,
        "patch_size": geo.patch_size,
        "median_image_size_in_voxels": [int(round(float(s))) for s in median_shape],
        "spacing": geo.spacing,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 1, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": unetr_architecture(geo),
        "batch_dice": False,
    }


def build_plans(dataset_name: str, spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                reader_writer: str = "SimpleITKIO", planner_name: str = "MedGMAEPlanner",
                configurations: Sequence[str] = (DEFAULT_CONFIGURATION,)) -> dict:
    """MedGMAE plans with the named configurations, from per-case original spacings and shapes (z, y, x)."""
    blocks = {}
    for name in configurations:
        geo = geometry(name)
        new_shapes = [compute_new_shape(shape, spacing, geo.spacing) for spacing, shape in zip(spacings, shapes)]
        blocks[name] = configuration_block(geo, np.median(new_shapes, 0))
    plans = {
        "dataset_name": dataset_name,
        "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": [float(s) for s in np.median(spacings, 0)],
        "original_median_shape_after_transp": [int(round(s)) for s in np.median(shapes, 0)],
        "image_reader_writer": reader_writer,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": blocks,
        "experiment_planner_used": planner_name,
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(WINDOW_INTENSITY_PROPERTIES)},
    }
    recursive_fix_for_json_export(plans)
    return plans


def save_plans_file(plans: dict, plans_file: Path) -> None:
    """Write plans atomically, keeping configurations a user added to an existing file (as nnU-Net does)."""
    import json

    plans = deepcopy(plans)
    if plans_file.is_file():
        try:
            old = json.loads(plans_file.read_text())
            for name, config in old.get("configurations", {}).items():
                plans["configurations"].setdefault(name, config)
        except ValueError:
            pass  # an unreadable old file is simply replaced
    write_json_atomic(plans_file, plans)


class MedGMAEPlanner(ExperimentPlanner):
    """nnU-Net's planner, reduced to the fixed MedGMAE configurations (`3d_fullres` unless told others)."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = PLANS_NAME,
                 overwrite_target_spacing=None, suppress_transpose: bool = True,
                 configurations: Sequence[str] = (DEFAULT_CONFIGURATION,)):
        # nnU-Net's plan_experiment_dataset passes suppress_transpose=False and no target spacing:
        # both are fixed by the recipe (each configuration's own spacing), so they are overridden here.
        self.medgmae_configurations = tuple(configurations)
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing=geometry(DEFAULT_CONFIGURATION).spacing, suppress_transpose=True)
        self.lowres_creation_threshold = 0
        self.dataset_fingerprint["foreground_intensity_properties_per_channel"] = {
            "0": dict(WINDOW_INTENSITY_PROPERTIES)}

    def plan_experiment(self) -> dict:
        plans = build_plans(self.dataset_name, self.dataset_fingerprint["spacings"],
                            self.dataset_fingerprint["shapes_after_crop"],
                            reader_writer=self.determine_reader_writer().__name__,
                            planner_name=type(self).__name__, configurations=self.medgmae_configurations)
        plans["plans_name"] = self.plans_identifier
        out_folder = Path(nnUNet_preprocessed) / self.dataset_name
        with atomic_path(out_folder / "dataset.json") as tmp:
            shutil.copyfile(Path(self.raw_dataset_folder) / "dataset.json", tmp)
        self.plans = plans
        self.save_plans(plans)
        return plans

    def save_plans(self, plans: dict) -> None:
        save_plans_file(plans, Path(nnUNet_preprocessed) / self.dataset_name / f"{self.plans_identifier}.json")
