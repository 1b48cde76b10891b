"""The configurations of the MedGMAE plans: one table, read by planning, pretraining and fine-tuning.

    3d_fullres   1.5 mm isotropic, 96^3 crops, ViT patch 16: the paper's setting (6^3 tokens, 144 mm)
    3d_lowres    3.0 mm isotropic, 48^3 crops, ViT patch 8: the same 144 mm field of view and the same
                 6^3 token grid at one-eighth of the voxels, so a CPU can train it in minutes

Both share the CT window and the normalisation (`medgmae_plans.planner`), the resampling and the
file format; only the geometry differs. A pretraining checkpoint records its configuration's
geometry, and fine-tuning refuses one whose spacing, crop or patch does not match the plans.

Torch- and nnU-Net-free, so that every command can read it before importing either.
"""
from __future__ import annotations

from dataclasses import dataclass

from .runtime import UserError

PLANS_NAME = "MedGMAEPlans"


@dataclass(frozen=True)
class Geometry:
    """What a configuration fixes: isotropic spacing (mm), cubic crop / patch and ViT patch (voxels)."""
    name: str
    spacing_mm: float
    patch: int
    vit_patch: int

    @property
    def spacing(self) -> list[float]:
        return [self.spacing_mm] * 3

    @property
    def patch_size(self) -> list[int]:
        return [self.patch] * 3

    @property
    def data_identifier(self) -> str:
        """The preprocessed data folder's name, as nnU-Net names it: `<plans>_<configuration>`."""
        return f"{PLANS_NAME}_{self.name}"


CONFIGURATIONS = {
    "3d_fullres": Geometry("3d_fullres", spacing_mm=1.5, patch=96, vit_patch=16),
    "3d_lowres": Geometry("3d_lowres", spacing_mm=3.0, patch=48, vit_patch=8),
}
DEFAULT_CONFIGURATION = "3d_fullres"

# The ViT patches UNETR decodes (`medgmae_trainers.unetr`: MONAI's four up-steps for 16, three for 12
# and 8), so the ones pretraining and fine-tuning offer: an encoder is pretrained to be fine-tuned.
SUPPORTED_PATCHES = (8, 12, 16)
# ViT-B, the paper's fine-tuning encoder, in ViT3D's keywords: the `base` preset's encoder
# (`medgmae_trainers.networks.presets`), ViT3D's and UNETR's defaults, and the UNETR the plans name
# (`planner.UNETR_ARCH_KWARGS`, in MONAI's keywords).
VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0}


def geometry(name: str) -> Geometry:
    """The configuration called `name`; a `UserError` listing the known ones otherwise."""
    try:
        return CONFIGURATIONS[name]
    except KeyError:
        raise UserError(f"unknown configuration {name!r}; MedGMAE plans have {', '.join(CONFIGURATIONS)}") from None
