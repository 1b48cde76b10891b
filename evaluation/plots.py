"""Pictures of an evaluation: the Table-1 Dice chart and predictions over the ground truth.

Slices are shown in radiological convention (patient's right on the left, anterior up) whatever
direction matrix the files carry, through the phantom preview's `load_lps`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path
from medgmae_plans.constants import HU_WINDOW
from medgmae_plans.runtime import UserError

from .display import column_header, init_display


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_color(label: int):
    """The phantom preview's palette (tab20 by label id), so every picture uses the same colours."""
    import matplotlib

    return matplotlib.colormaps["tab20"](int(label) % 20)


def dice_chart(comp, out_png: Path, title: str = "") -> Path:
    """Grouped bars: one group per (dataset, fraction), one bar per init; mean Dice in %,
    with the range over replicates as an error bar when a cell has several replicates, else the range
    over its folds when it has several."""
    plt = _pyplot()
    n_cols, n_rows = len(comp.columns), len(comp.rows)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 1.1 * n_cols * max(n_rows, 1) * 0.6), 3.8))
    width = 0.8 / max(n_rows, 1)
    colors = {"scratch": "#9e9e9e", "voxelmae": "#64b5f6", "medgmae": "#ef6c00", "medgmaestar": "#c62828"}
    for r, init in enumerate(comp.rows):
        xs, ys, lo, hi = [], [], [], []
        for c, column in enumerate(comp.columns):
            cell = comp.cells.get((init, *column))
            if not cell:
                continue
            mean = 100 * cell.mean("dice")
            replicates = list(cell.replicate_means("dice").values())
            spread = replicates if len(replicates) > 1 else cell.dice  # else one replicate's folds
            xs.append(c - 0.4 + width * (r + 0.5))
            ys.append(mean)
            lo.append(mean - 100 * min(spread))
            hi.append(100 * max(spread) - mean)
        bars = ax.bar(xs, ys, width * 0.95, label=init_display(init), color=colors.get(init),
                      yerr=[lo, hi] if any(lo) or any(hi) else None, capsize=2)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(n_cols), [column_header(c) for c in comp.columns])
    ax.set_ylabel("mean Dice (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(n_rows, 4), loc="upper left")
    ax.set_title(title or "Segmentation: mean Dice over organs", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(out_png)


@dataclass(frozen=True)
class OverlayCase:
    name: str
    image: Path        # the CT (HU)
    reference: Path    # ground-truth label map on the image's grid
    prediction: Path   # predicted label map on the same grid


def _axial_picks(ref: np.ndarray, n_slices: int) -> list[int]:
    """Axial indices spread over the labelled z range (quantiles), or over the volume if unlabelled."""
    zs = np.flatnonzero(ref.reshape(ref.shape[0], -1).any(axis=1))
    lo, hi = (zs[0], zs[-1]) if zs.size else (0, ref.shape[0] - 1)
    return sorted({int(round(lo + (hi - lo) * q)) for q in np.linspace(0.2, 0.8, n_slices)})


@dataclass
class OverlayArrays:
    name: str
    ct: np.ndarray      # [z, y, x] in HU
    reference: np.ndarray
    prediction: np.ndarray
    spacing: Sequence[float]   # (z, y, x) mm


def prediction_overlays(cases: Sequence[OverlayCase], out_png: Path, label_names: dict[int, str] | None = None,
                        n_slices: int = 3, title: str = "") -> Path:
    """A PNG with one row per case and `n_slices` axial slices: the CT in the [-175, 250] HU window,
    the ground truth as filled colours and the prediction as outlines of the same colours."""
    from preprocessing.phantom.preview import load_lps

    if not cases:
        raise UserError("prediction_overlays: no cases to draw")
    rows = []
    for case in cases:
        ct, spacing = load_lps(case.image)
        ref, _ = load_lps(case.reference)
        pred, _ = load_lps(case.prediction)
        if ct.shape != ref.shape or ct.shape != pred.shape:
            raise UserError(f"{case.prediction}: shape {pred.shape} does not match the image {case.image} "
                            f"{ct.shape} or the reference {ref.shape}")
        rows.append(OverlayArrays(case.name, ct, ref, pred, spacing))
    return overlay_arrays(rows, out_png, label_names, n_slices, title)


def overlay_arrays(cases: Sequence[OverlayArrays], out_png: Path, label_names: dict[int, str] | None = None,
                   n_slices: int = 3, title: str = "") -> Path:
    """`prediction_overlays` of arrays already in memory (axial slices along the first axis)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not cases:
        raise UserError("prediction_overlays: no cases to draw")
    plt = _pyplot()
    legend_rows = math.ceil((len(label_names or {}) + 2) / 6) if label_names else 4
    legend_h = 0.2 * legend_rows + 0.15  # inches kept free below the panels for the legend
    fig_h = 3.4 * len(cases) + legend_h
    fig, axes = plt.subplots(len(cases), n_slices, figsize=(3.2 * n_slices, fig_h), squeeze=False)
    seen: set[int] = set()
    for row, case in zip(axes, cases):
        ct, ref, pred, spacing = case.ct, case.reference, case.prediction, case.spacing
        aspect = spacing[1] / spacing[2]
        picks = _axial_picks(ref, n_slices)
        for ax in row:
            ax.axis("off")
        for ax, z in zip(row, picks):
            ax.imshow(ct[z], cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1], aspect=aspect,
                      interpolation="nearest")
            labels = sorted((set(np.unique(ref[z]).tolist()) | set(np.unique(pred[z]).tolist())) - {0})
            fill = np.zeros(ref[z].shape + (4,), np.float32)
            for label in labels:
                color = label_color(label)
                fill[ref[z] == label] = (*color[:3], 0.4)
                if (pred[z] == label).any():
                    ax.contour(pred[z] == label, levels=[0.5], colors=[color[:3]], linewidths=1.0)
            seen.update(labels)
            ax.imshow(fill, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{case.name}  z={z}", fontsize=8)
    names = label_names or {}
    handles = [Patch(color=label_color(k)[:3], label=f"{k} {names.get(k, '')}".strip()) for k in sorted(seen)]
    handles += [Patch(facecolor=(0.5, 0.5, 0.5, 0.4), label="reference (filled)"),
                Line2D([0], [0], color="k", lw=1, label="prediction (outline)")]
    fig.legend(handles=handles, loc="lower center", ncols=min(6, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(title or "predictions (outlines) over the ground truth (filled)", fontsize=10)
    fig.tight_layout(rect=(0, legend_h / fig_h, 1, 1 - 0.35 / fig_h))
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(out_png)
