"""Pictures: ROC curves per class, and the training curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_curves_png(y: np.ndarray, s: np.ndarray, classes: Sequence[str], aurocs: Sequence[float],
                   intervals: Sequence[Sequence[float]], png: Path, title: str) -> Path:
    """One small ROC panel per class (AUROC and its bootstrap interval in the title)."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    cols = min(6, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(classes):
            ax.axis("off")
            continue
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        if np.isfinite(aurocs[k]):
            fpr, tpr, _ = roc_curve(y[:, k], s[:, k])
            ax.plot(fpr, tpr, lw=1.5)
            lo, hi = intervals[k]
            ax.set_title(f"{classes[k]}\nAUC {aurocs[k]:.3f} [{lo:.2f}, {hi:.2f}]", fontsize=8)
        else:
            ax.set_title(f"{classes[k]}\n(one label value only)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
        ax.set_aspect("equal")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(png)


def training_curves_png(history: Sequence[dict], png: Path, title: str) -> Path:
    """Training loss per epoch and validation macro AUROC where it was measured."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ep = [h["epoch"] for h in history]
    ax[0].plot(ep, [h["train_loss"] for h in history], marker=".")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("BCE loss (train)")
    val = [(h["epoch"], h["val_macro_auroc"]) for h in history if h.get("val_macro_auroc") is not None]
    if val:
        ax[1].plot(*zip(*val), marker=".", color="C1")
    ax[1].axhline(0.5, color="0.7", ls="--", lw=0.8)
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("macro AUROC (valid)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(png)
