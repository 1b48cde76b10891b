"""Fine-tuning UNETR with nnU-Net v2 from a pretrained ViT encoder (`medgmae_train`, `medgmae_predict`).

Importing this package imports nothing heavy; `trainers` imports nnunetv2 (set the nnU-Net folders
first, `medgmae_plans.runtime.paths.ensure_nnunet_env`).
"""
import os
from pathlib import Path

# The folder to put in nnU-Net's `nnUNet_extTrainer` so that nnUNetv2_train/nnUNetv2_predict find the trainers.
EXT_TRAINER_DIR = Path(__file__).resolve().parent / "nnunet_ext"


def use_ext_trainers() -> None:
    """Put our trainer folder first in `nnUNet_extTrainer` (keeping any folders already there).

    nnU-Net 2.8 finds trainers outside its own package only through that variable, which it reads
    at each lookup; child processes inherit it. Our commands set it so the user never has to.
    """
    ext = os.environ.get("nnUNet_extTrainer", "")
    if str(EXT_TRAINER_DIR) not in ext.split(os.pathsep):
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(EXT_TRAINER_DIR)] + ([ext] if ext else []))
