"""Pictures: a registered pair (fixed, moving, warped, deformation grid) and the training curves."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid_lines(ax, ddf2: np.ndarray, step: int = 4) -> None:
    """Draw the deformed grid of a 2D slice: ddf2 [2, H, W] (row, column displacement, voxels)."""
    h, w = ddf2.shape[1:]
    rr, cc = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    r, c = rr + ddf2[0], cc + ddf2[1]
    for i in range(0, h, step):
        ax.plot(c[i], r[i], color="tab:red", lw=0.6)
    for j in range(0, w, step):
        ax.plot(c[:, j], r[:, j], color="tab:red", lw=0.6)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")


def pair_png(path: Path, fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray, ddf: np.ndarray,
             fixed_seg: np.ndarray | None = None, title: str = "") -> None:
    """Axial and coronal middle slices: fixed, moving, warped (fixed's label outlines on both), grid.

    Arrays [z, y, x]; ddf [3, z, y, x] voxels.
    """
    plt = _plt()
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.5))
    z, y = fixed.shape[0] // 2, fixed.shape[1] // 2
    views = [("axial", lambda a: a[z], lambda d: d[[1, 2], z]),
             ("coronal", lambda a: a[:, y][::-1], lambda d: d[[0, 2], :, y][:, ::-1] * np.array([-1, 1])[:, None, None])]
    for row, (name, cut, cut_ddf) in enumerate(views):
        for col, (label, vol) in enumerate((("fixed", fixed), ("moving", moving), ("warped moving", warped))):
            ax = axes[row, col]
            ax.imshow(cut(vol), cmap="gray", vmin=0, vmax=1)
            if fixed_seg is not None and col != 0:
                ax.contour(cut(fixed_seg) > 0, levels=[0.5], colors="tab:cyan", linewidths=0.6)
            ax.set_title(f"{label} ({name})", fontsize=9)
            ax.axis("off")
        ax = axes[row, 3]
        _grid_lines(ax, cut_ddf(ddf))
        ax.set_title(f"deformation grid ({name})", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def training_curves_png(metrics_jsonl: Path, path: Path) -> None:
    """Loss parts per step and the validation mean Dice over steps."""
    recs = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    if not recs:
        return
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in recs]
    win = max(1, len(recs) // 20)  # one pair per step is noisy: show a running mean as well
    for key in ("loss", "ncc", "diffusion", "dice"):
        if key in recs[0]:
            vals = np.array([r[key] for r in recs])
            line, = a.plot(steps, vals, lw=0.5, alpha=0.35)
            smooth = np.convolve(vals, np.ones(win) / win, mode="valid")
            a.plot(steps[win - 1:], smooth, lw=1.5, color=line.get_color(), label=key)
    a.set_xlabel("step")
    a.legend()
    a.set_title(f"training loss parts (unweighted; running mean of {win})")
    val = [(r["step"], r["val_mean_dice"]) for r in recs if "val_mean_dice" in r]
    if val:
        b.plot(*zip(*val), marker="o", label="registered")
        before = [r["val_mean_dice_before"] for r in recs if "val_mean_dice_before" in r]
        if before:
            b.axhline(before[0], color="gray", ls="--", label="unregistered")
        b.legend()
    else:
        b.text(0.5, 0.5, "no validation during training (--val-every 0);\nsee train.json for the final one",
               ha="center", va="center", transform=b.transAxes)
    b.set_xlabel("step")
    b.set_title("validation mean Dice")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
