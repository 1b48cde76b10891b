"""The tables every part of the toolkit must agree on, each defined once.

Planning writes the CT window into the plans, pretraining records it in its checkpoints, fine-tuning
refuses a checkpoint whose record differs, and registration, reconstruction and the pictures window
CT the same way: if two of them held their own copy, a change to one would silently mix intensity
scales. Numpy only (no torch, no nnU-Net), so that any command can import it before either.
"""
from __future__ import annotations

import numpy as np

# The paper's CT intensity window in Hounsfield units, for the abdomen's soft tissue: fat, organs and
# contrast-filled vessels keep their contrast; air and lung clip to 0, dense bone and metal to 1.
HU_WINDOW = (-175.0, 250.0)

_LOW, _HIGH = HU_WINDOW
# The `normalisation` record of a pretraining checkpoint's metadata, which fine-tuning's `check_fits`
# compares against: the keys and their values are part of the checkpoint format.
NORMALISATION = {"scheme": "CTNormalization", "hu_window": [_LOW, _HIGH], "range": [0.0, 1.0],
                 "formula": f"(clip(HU, {_LOW:g}, {_HIGH:g}) + {-_LOW:g}) / {_HIGH - _LOW:g}"}

# The initialisations a fine-tuning run starts from, in the paper's row order (Table 1), and how
# trainer names, run records and result tables show them. The last row is not UNETR: `nnunet` is
# nnU-Net's own network (PlainConvUNet) and recipe from scratch, the anchor a user would pick instead.
INIT_DISPLAY = {"scratch": "Scratch", "voxelmae": "voxel-MAE", "medgmae": "MedGMAE", "medgmaestar": "MedGMAE*",
                "nnunet": "nnU-Net (PlainConvUNet)"}
INITS = tuple(INIT_DISPLAY)
FROM_SCRATCH = ("scratch", "nnunet")  # the inits that start without a pretrained checkpoint
# The pretraining decoder type a checkpoint records -> the init name of the runs it starts.
INIT_BY_DECODER = {"voxel": "voxelmae", "gaussian": "medgmae", "hierarchical": "medgmaestar"}

# A fine-tuning run's settings and results, in its nnU-Net fold folder: medgmae_train writes it,
# medgmae_evaluate finds runs by it.
FINETUNE_RECORD = "medgmae_finetune.json"


def window_hu(hu: np.ndarray, window=HU_WINDOW) -> np.ndarray:
    """HU -> [0, 1]: clip to `window` (low, high), then (HU - low) / (high - low); float32."""
    low, high = window
    return ((np.clip(hu, low, high) - low) / (high - low)).astype(np.float32)
