"""The probe's classifier: a class-balanced, L2-regularised linear softmax on voxel features.

Training voxels are drawn per class (`balanced_points`: up to `per_class` voxels of each class over
the training cases, split evenly between the cases that have the class, drawn with one seeded
generator), and each class's samples carry equal total weight in the cross-entropy, so small organs
count as much as the background. Features are standardised with the training samples' mean and
standard deviation; the fit is full-batch L-BFGS from zero weights (deterministic), and the
standardisation is folded into the weights, so `LinearProbe` applies to a raw field directly. The
L2 weights are fitted from the strongest down, each starting from the previous solution (`start`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .features import sample_field, upsample_field

# fitted in this order (warm starts); the validation cases choose. 1e-6 because pretrained encoders chose the
# 1e-5 edge of the former grid (docs/results.md, the frozen-encoder probe)
L2_WEIGHTS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
PER_CLASS = 4000                               # training voxels per class, over all training cases
MAX_ITER = 100                                 # L-BFGS iterations


def balanced_points(segs: Sequence[np.ndarray], n_classes: int, per_class: int, seed: int) -> list[np.ndarray]:
    """Per case, the voxel indices [P, 3] drawn for training (see the module docstring)."""
    rng = np.random.default_rng(seed)
    present = [set(np.unique(s).tolist()) for s in segs]
    points = []
    for seg, classes in zip(segs, present):
        flat = seg.reshape(-1)
        picked = []
        for c in range(n_classes):
            if c not in classes:
                continue
            quota = math.ceil(per_class / sum(c in p for p in present))
            where = np.flatnonzero(flat == c)
            picked.append(np.sort(rng.choice(where, min(quota, where.size), replace=False)))
        idx = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        points.append(np.stack(np.unravel_index(idx, seg.shape), -1))
    return points


def training_samples(fields: Sequence[torch.Tensor], segs: Sequence[np.ndarray], stride: int, n_classes: int,
                     per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [P, C], labels [P]) of the balanced training voxels of every case."""
    xs, ys = [], []
    for field, seg, pts in zip(fields, segs, balanced_points(segs, n_classes, per_class, seed)):
        pts_t = torch.as_tensor(pts, dtype=torch.long, device=field.device)
        xs.append(sample_field(field, stride, pts_t))
        ys.append(torch.as_tensor(seg[tuple(pts.T)].astype(np.int64), device=field.device))
    return torch.cat(xs), torch.cat(ys)


@dataclass
class LinearProbe:
    weight: torch.Tensor   # [K, C], on raw (unstandardised) features
    bias: torch.Tensor     # [K]
    l2: float
    standardised: tuple = ()   # (weight, bias) on standardised features: where the next fit starts

    def logits_field(self, field: torch.Tensor) -> torch.Tensor:
        """[K, *grid] logits of every cell of a field [C, *grid]."""
        flat = field.reshape(field.shape[0], -1)
        return (self.weight @ flat + self.bias[:, None]).reshape(-1, *field.shape[1:])

    @torch.no_grad()
    def segment(self, field: torch.Tensor, stride: int, shape: Sequence[int]) -> np.ndarray:
        """The label map [D, H, W]: the argmax of the logits at every voxel.

        `upsample_field` is `sample_field` at every voxel (the same trilinear weights, border cells
        repeated), as one interpolation instead of a gather per voxel.
        """
        return upsample_field(self.logits_field(field), stride, shape).argmax(0).to(torch.int16).cpu().numpy()


def fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int = MAX_ITER,
               start: LinearProbe | None = None) -> LinearProbe:
    """Class-balanced softmax regression: sum over classes present of their mean cross-entropy, divided
    by the number of classes present, plus `l2` times the squared weights (not the bias)."""
    x = x.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    counts = torch.bincount(y, minlength=n_classes).float()
    per_class = torch.where(counts > 0, 1.0 / (counts * (counts > 0).sum()), torch.zeros_like(counts))
    sample_w = per_class[y]
    if start is not None:
        w, b = (t.clone().requires_grad_(True) for t in start.standardised)
    else:
        w = torch.zeros(n_classes, x.shape[1], device=x.device, requires_grad=True)
        b = torch.zeros(n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = (F.cross_entropy(z @ w.T + b, y, reduction="none") * sample_w).sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / std
        return LinearProbe(weight.detach().clone(), (b - weight @ mean).detach().clone(), float(l2),
                           (w.detach().clone(), b.detach().clone()))
