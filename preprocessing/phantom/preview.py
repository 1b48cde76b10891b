"""A PNG montage of phantom cases: axial, coronal and sagittal slices with the labels overlaid.

Images are shown in radiological convention (patient's right on the left, anterior up, head up)
whatever direction matrix the file was written with, at their physical aspect ratio.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path

from ..labels import AMOS_LABELS

WINDOW = (-160, 240)  # soft-tissue window, HU


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


def _views(hu, label):
    """(title, image slice, label slice, axis of the slice) for the montage's five panels."""
    L = AMOS_LABELS
    mid = [s // 2 for s in hu.shape]
    pelvic = _level(label, [L["bladder"]], 0)
    picks = [
        ("axial, liver", 0, _level(label, [L["liver"]], 0)),
        ("axial, kidneys", 0, _level(label, [L["right kidney"], L["left kidney"]], 0)),
        ("axial, pelvis" if pelvic is not None else "axial, pancreas", 0,
         pelvic if pelvic is not None else _level(label, [L["pancreas"]], 0)),
        ("coronal", 1, _level(label, [L["right kidney"], L["left kidney"]], 1)),
        ("sagittal", 2, _level(label, [L["aorta"]], 2)),
    ]
    for title, axis, index in picks:
        index = mid[axis] if index is None else index
        take = [slice(None)] * 3
        take[axis] = index
        yield title, hu[tuple(take)], label[tuple(take)], axis


def write_preview(dataset_dir: Path, out_png: Path, n_cases: int = 2) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    images = sorted((dataset_dir / "imagesTr").glob("*_0000.nii.gz"))[:n_cases]
    colors = label_colors()
    fig, axes = plt.subplots(len(images), 5, figsize=(22, 5.5 * len(images)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.3, 1.3, 1.3, 1.1, 0.8]})
    for row, image_path in zip(axes, images):
        case = image_path.name[: -len("_0000.nii.gz")]
        hu, spacing = load_lps(image_path)
        label, _ = load_lps(dataset_dir / "labelsTr" / f"{case}.nii.gz")
        for ax, (title, img, lab, axis) in zip(row, _views(hu, label)):
            # axial rows are y (anterior up); coronal/sagittal rows are z, drawn with the head up
            rows_mm, cols_mm = [s for a, s in enumerate(spacing) if a != axis]
            origin = "upper" if axis == 0 else "lower"
            ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin=origin, aspect=rows_mm / cols_mm)
            overlay = colors[lab]
            overlay[..., 3] *= 0.45
            ax.imshow(overlay, origin=origin, aspect=rows_mm / cols_mm)
            ax.set_title(f"{case}: {title}", fontsize=10)
            ax.axis("off")
    names = [n for n in AMOS_LABELS if n != "background"]
    handles = [Patch(color=colors[AMOS_LABELS[n]][:3], label=f"{AMOS_LABELS[n]} {n}") for n in names]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=9, frameon=False)
    fig.suptitle(f"{dataset_dir.name}: soft-tissue window [{WINDOW[0]}, {WINDOW[1]}] HU", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=64)
    plt.close(fig)
    return Path(out_png)
