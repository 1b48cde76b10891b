"""Pictures of a pretraining run: the loss curve and a snapshot of one crop (input, masked, prediction, centres)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grey_slices(axes, panels) -> None:
    """Each (title, 2-D slice) of `panels` in its axis, grey over [0, 1] (the CT window's range)."""
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")


def save_figure(fig, out_png: Path, title: str, dpi: int = 100) -> None:
    """Title, layout, then the PNG written atomically; the figure is closed."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi)
    _pyplot().close(fig)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: Path, out_png: Path, title: str = "") -> None:
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("masked MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plot_snapshot(image: np.ndarray, voxel_mask: np.ndarray, pred: np.ndarray, out_png: Path, *,
                  gaussians: dict | None = None, title: str = "") -> None:
    """One crop's middle axial slice. image, pred [D, H, W]; voxel_mask bool [D, H, W];
    gaussians: numpy means [K, 3], scales [K, 3], intensities [K] of this crop (Gaussian decoders)."""
    plt = _pyplot()
    z = image.shape[0] // 2
    sl = lambda v: v[z]  # noqa: E731
    masked = np.where(voxel_mask, np.nan, image)
    composite = np.where(voxel_mask, pred, image)
    panels = [("input", sl(image)), ("masked input", sl(masked)),
              ("prediction (full)" if gaussians is not None else "prediction", sl(pred)),
              ("prediction on masked + visible", sl(composite))]
    ncols = len(panels) + (gaussians is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(3 * ncols, 3.3))
    grey_slices(axes, panels)
    if gaussians is not None:
        ax = axes[-1]
        ax.imshow(sl(image), cmap="gray", vmin=0, vmax=1, alpha=0.5)
        D, H, W = image.shape
        mu, s, inten = gaussians["means"], gaussians["scales"], gaussians["intensities"]
        # Centres within two mean scales of this slice, sized by their in-plane scale.
        near = np.abs(mu[:, 0] - (z + 0.5) / D) < 2 * s[:, 0].mean() + 1e-6
        ax.scatter(mu[near, 2] * W - 0.5, mu[near, 1] * H - 0.5, s=4 + 400 * s[near, 1:].mean(1),
                   c=inten[near], cmap="viridis", vmin=0, vmax=1, alpha=0.7, edgecolors="none")
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_title(f"Gaussian centres ({int(near.sum())}/{len(mu)} near slice)", fontsize=9)
        ax.axis("off")
    save_figure(fig, out_png, title)
