"""Fine-tuning UNETR with nnU-Net v2 from a pretrained ViT encoder (`medgmae_train`).

Importing this package imports nothing heavy; `trainers` imports nnunetv2 (set the nnU-Net folders
first, `medgmae_plans.paths.ensure_nnunet_env`).
"""
from pathlib import Path

# The folder to put in nnU-Net's `nnUNet_extTrainer` so that nnUNetv2_train/nnUNetv2_predict find the trainers.
EXT_TRAINER_DIR = Path(__file__).resolve().parent / "nnunet_ext"
