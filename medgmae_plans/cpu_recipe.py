"""The CPU-scale recipe shared by the main job (`run.py demo`) and the transfer benchmark, defined once.

Everything runs on the 3 mm `3d_lowres` configuration (48^3 crops, ViT patch 8), where two CPU cores
train in minutes what 1.5 mm would take hours for. Fine-tuning from scratch and from a pretrained
encoder share one recipe, chosen on fold 0's validation cases (docs/results.md): 9 x 50 iterations
at AdamW lr 3e-3, no mirroring (a short run cannot learn left from right in mirrored abdomens), one
thread per run so that two runs share the two cores side by side (a tiny-UNETR step is 0.40 s on one
thread against 0.26 s on two, bf16), and the CPU's sliding-window step for validation and the test
cases. Standard library only: `run.py` imports it before anything is installed.
"""
from __future__ import annotations

CONFIGURATION = "3d_lowres"
PHANTOM_CASES, PHANTOM_UNLABELED = 20, 8   # labelled training cases, unlabelled images for pretraining
PRESET = "tiny"
PRETRAIN_STEPS = 1200
# Pretraining crops centred on body tissue, never on labels (`medgmae_pretrain --crop-centres body`):
# both users of this recipe compare fine-tuning at a label fraction, so pretraining must not have
# seen the other 90 % of the labels through organ-centred crops.
PRETRAIN_CROP_CENTRES = "body"
EPOCHS, ITERS_PER_EPOCH = 9, 50
UNETR_LR = 3e-3                            # nnU-Net's own network keeps its SGD lr (`--init nnunet`)
THREADS_PER_RUN = 1


def finetune_flags(epochs: int = EPOCHS, iters_per_epoch: int = ITERS_PER_EPOCH) -> list[str]:
    """`medgmae_train` flags of the recipe's budget, for every init (UNETR runs add `unetr_flags`)."""
    return ["--epochs", str(epochs), "--iters-per-epoch", str(iters_per_epoch), "--no-mirroring",
            "--threads", str(THREADS_PER_RUN)]


def unetr_flags() -> list[str]:
    return ["--lr", f"{UNETR_LR:g}"]
