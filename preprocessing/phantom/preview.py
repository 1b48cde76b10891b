"""A PNG montage of phantom cases side by side: contrast phases, habitus and coverage, with the labels.

Images are shown in radiological convention (patient's right on the left, anterior up, head up)
whatever direction matrix the file was written with, at their physical aspect ratio.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path

from ..labels import AMOS_LABELS

WINDOW = (-160, 240)  # soft-tissue window, HU (width 400, level 40)


def load_lps(path: Path):
    """Image as an array [z, y, x] reoriented to LPS (x left, y posterior, z superior), and its spacing."""
    import SimpleITK as sitk

    img = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    return sitk.GetArrayFromImage(img), tuple(reversed(img.GetSpacing()))


def label_colors() -> np.ndarray:
    """RGBA per label id (0 transparent), a fixed palette so every picture uses the same colours."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colors = np.array([cmap(i % 20) for i in range(len(AMOS_LABELS))], np.float32)
    colors[0, 3] = 0.0
    return colors


def _level(label: np.ndarray, ids: list[int], axis: int) -> int | None:
    """Index along `axis` where the given labels cover the most voxels (None if absent)."""
    other = tuple(a for a in range(3) if a != axis)
    area = np.isin(label, ids).sum(axis=other)
    return int(area.argmax()) if area.any() else None


# Rows of the montage: (title, axis, labels whose largest slice is shown, overlay the labels?).
# The liver row is plain so the contrast phase is read off the image itself.
VIEWS = (("axial, liver", 0, ["liver"], False),
         ("axial, kidneys + labels", 0, ["right kidney", "left kidney"], True),
         ("coronal + labels", 1, ["right kidney", "left kidney"], True))


def _slice(volume, axis: int, index: int):
    take = [slice(None)] * 3
    take[axis] = index
    return volume[tuple(take)]


def pick_cases(dataset_dir: Path, n_cases: int) -> list[str]:
    """Training cases that show the variety: the first of each contrast phase, then the leanest and
    the heaviest patient, then the shortest scan, then in order, up to `n_cases`."""
    import json

    info = [c for c in json.loads((dataset_dir / "phantom_cases.json").read_text()) if c["kind"] == "train"]
    picks: list[str] = []
    for phase in ("non-contrast", "arterial", "portal-venous", "delayed"):
        picks += [c["case"] for c in info if c.get("phase") == phase][:1]
    by_fat = sorted(info, key=lambda c: c.get("patient", {}).get("fat_mm", 0))
    by_length = sorted(info, key=lambda c: -np.subtract(*c.get("z_range_mm", [0, 0])))
    for c in [by_fat[0], by_fat[-1], by_length[0], *info]:
        if c["case"] not in picks:
            picks.append(c["case"])
    return picks[:n_cases]


def _title(c: dict) -> str:
    p = c.get("patient", {})
    z0, z1 = c.get("z_range_mm", [0, 0])
    return (f"{c['case']}: {c.get('phase', '?')}\n{'F' if c.get('female') else 'M'} BMI {p.get('bmi', 0):.0f}, "
            f"fat {p.get('fat_mm', 0):.0f} mm, {z1 - z0:.0f} mm {'+pelvis' if c.get('pelvis') else ''}")


def write_preview(dataset_dir: Path, out_png: Path, n_cases: int = 6) -> Path:
    """Cases side by side (columns), three views each (rows), soft-tissue window."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    info = {c["case"]: c for c in json.loads((dataset_dir / "phantom_cases.json").read_text())}
    cases = pick_cases(dataset_dir, n_cases)
    colors = label_colors()
    fig, axes = plt.subplots(len(VIEWS), len(cases), figsize=(3.6 * len(cases), 3.4 * len(VIEWS) + 1.2),
                             squeeze=False)
    for col, case in enumerate(cases):
        hu, spacing = load_lps(dataset_dir / "imagesTr" / f"{case}_0000.nii.gz")
        label, _ = load_lps(dataset_dir / "labelsTr" / f"{case}.nii.gz")
        for row, (title, axis, organs, overlay) in enumerate(VIEWS):
            ax = axes[row, col]
            index = _level(label, [AMOS_LABELS[o] for o in organs], axis)
            index = hu.shape[axis] // 2 if index is None else index
            img, lab = _slice(hu, axis, index), _slice(label, axis, index)
            # axial rows are y (anterior up); coronal rows are z, drawn with the head up
            rows_mm, cols_mm = [s for a, s in enumerate(spacing) if a != axis]
            origin = "upper" if axis == 0 else "lower"
            ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin=origin, aspect=rows_mm / cols_mm)
            if overlay:
                rgba = colors[lab]
                rgba[..., 3] *= 0.4
                ax.imshow(rgba, origin=origin, aspect=rows_mm / cols_mm)
            ax.set_title(_title(info[case]) if row == 0 else title, fontsize=9)
            ax.axis("off")
    names = [n for n in AMOS_LABELS if n != "background"]
    handles = [Patch(color=colors[AMOS_LABELS[n]][:3], label=f"{AMOS_LABELS[n]} {n}") for n in names]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=8, frameon=False)
    fig.suptitle(f"{dataset_dir.name}: soft-tissue window [{WINDOW[0]}, {WINDOW[1]}] HU; rows: axial at the "
                 "liver's largest slice, axial at the kidneys with labels, coronal with labels", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=72)
    plt.close(fig)
    return Path(out_png)
