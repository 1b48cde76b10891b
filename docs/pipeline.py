"""Draw docs/pipeline.png, the README's picture of the data flow: `python docs/pipeline.py`.

Each box is a folder or file the toolkit writes, each arrow the command that writes the next one.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent / "pipeline.png"

# (x, y, title, what it holds, the command that writes it)
MAIN = [
    (0.0, 2.0, "raw", "nnUNet_raw/\nDatasetXXX_Name", "medgmae_make_phantom\nmedgmae_convert"),
    (2.2, 2.0, "plans", "MedGMAEPlans.json\n3d_fullres, 3d_lowres", "medgmae_plan_and_\npreprocess"),
    (4.4, 2.0, "preprocessed", "MedGMAEPlans_<cfg>/\n*.b2nd, Collection_*", "(the same command)"),
    (6.6, 2.0, "pretrain", "checkpoint_final.pt\n(the ViT3D encoder)", "medgmae_pretrain"),
    (8.8, 2.0, "fine-tune", "nnUNet_results/\nMedGMAETrainer_*", "medgmae_train"),
    (11.0, 2.0, "evaluate", "summary_medgmae.json\nTable 1, Dice, NSD", "medgmae_evaluate"),
]
DOWNSTREAM = [
    (2.2, 0.0, "probe", "probe.json: Dice of a\nfrozen linear probe", "medgmae_probe"),
    (4.4, 0.0, "classify", "AUROC (CT-RATE)", "medgmae_classify"),
    (6.6, 0.0, "register", "Dice, det(J) (OASIS, IXI)", "medgmae_register"),
    (8.8, 0.0, "reconstruct", "PSNR, SSIM (3DGR-CT)", "medgmae_reconstruct"),
    (11.0, 0.0, "predict", "segmentations of\nnew images", "medgmae_predict"),
]
W, H = 1.8, 1.3


def box(ax, x, y, title, body, command, colour):
    ax.add_patch(FancyBboxPatch((x, y), W, H, boxstyle="round,pad=0.05", fc=colour, ec="0.3", lw=1))
    ax.text(x + W / 2, y + H - 0.2, title, ha="center", va="center", fontsize=10, weight="bold")
    ax.text(x + W / 2, y + 0.72, body, ha="center", va="center", fontsize=6.5, family="monospace")
    ax.text(x + W / 2, y + 0.25, command, ha="center", va="center", fontsize=6.5, family="monospace",
            color="#7a2e00", style="italic")


def arrow(ax, start, end):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color="0.25", lw=1.2))


def main() -> Path:
    fig, ax = plt.subplots(figsize=(13, 4.2))
    for item in MAIN:
        box(ax, *item, "#dbe9f6")
    for item in DOWNSTREAM:
        box(ax, *item, "#e6f4e1")
    for (x0, y0, *_), (x1, y1, *_) in zip(MAIN, MAIN[1:]):
        arrow(ax, (x0 + W + 0.07, y0 + H / 2), (x1 - 0.07, y1 + H / 2))
    ckpt, finetuned = MAIN[3], MAIN[4]
    *from_encoder, predict = DOWNSTREAM
    for x, y, *_ in from_encoder:  # the probe and the downstream tasks start from the pretrained encoder
        arrow(ax, (ckpt[0] + W / 2, ckpt[1] - 0.07), (x + W / 2, y + H + 0.07))
    arrow(ax, (finetuned[0] + W, finetuned[1] - 0.07), (predict[0] + W / 2, H + 0.07))
    ax.text(6.5, 3.6, "MedGMAE data flow. Blue: the segmentation pipeline; green: what starts from a pretrained "
            "encoder or a trained model. Italic: the command that writes each box.", ha="center", fontsize=9)
    ax.set_xlim(-0.2, 13.0)
    ax.set_ylim(-0.2, 3.9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    plt.close(fig)
    return OUT


if __name__ == "__main__":
    print(main())
