"""PNG pictures of a reconstruction: PSNR/SSIM curves and middle axial slices at chosen iterations."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: Mapping[str, Sequence[dict]], png: str | Path, psnr_target: float = 35.0,
                ssim_target: float = 0.90, title: str = "") -> None:
    """PSNR and SSIM against iteration and fit time, one line per run (records from `fit`)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, records in runs.items():
        it = [r["iteration"] for r in records]
        axes[0].plot(it, [r["psnr"] for r in records], label=name)
        axes[1].plot(it, [r["ssim"] for r in records], label=name)
        axes[2].plot([r["time_s"] for r in records], [r["psnr"] for r in records], label=name)
    axes[0].axhline(psnr_target, color="gray", ls="--", lw=0.8)
    axes[1].axhline(ssim_target, color="gray", ls="--", lw=0.8)
    axes[2].axhline(psnr_target, color="gray", ls="--", lw=0.8)
    for ax, (xl, yl) in zip(axes, (("iteration", "PSNR (dB, 3D, data range 1)"), ("iteration", "SSIM (3D, data range 1)"),
                                   ("fit time (s)", "PSNR (dB)"))):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def plot_slices(truth: np.ndarray, fbp: np.ndarray, snapshots: Mapping[int, np.ndarray], png: str | Path,
                title: str = "") -> None:
    """Ground truth, FBP and the reconstruction's middle axial slice at each snapshot iteration."""
    plt = _pyplot()
    panels = [("ground truth", truth), ("FBP", fbp)] + [(f"iter {it}", img) for it, img in sorted(snapshots.items())]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (name, img) in zip(np.atleast_1d(axes), panels):
        ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
