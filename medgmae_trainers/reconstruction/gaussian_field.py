"""The Gaussians a reconstruction fits: parameters, rendering, Adam with per-parameter learning
rates, and 3DGR-CT's adaptive density control (clone / split by position gradient, prune).

Parameters (K Gaussians; coordinates as the renderer's, normalised (z, y, x) in [0, 1]^3):
    means       [K, 3]  optimised directly
    log_scales  [K, 3]  scales = exp(log_scales), standard deviations in normalised units
    quats       [K, 4]  (w, x, y, z), normalised by the renderer
    intensities [K]     optimised directly (signed: overlapping Gaussians may need to subtract)

Density control, every `densify_every` iterations inside [densify_from, densify_until]
(`DensifyConfig`), on the mean norm of d loss / d means since the last control step, measured in
voxel units (the normalised gradient divided by the volume's edge lengths):
    clone  gradient > threshold and largest scale <= `dense_scale` voxels: a copy in place; both
           halves carry half the intensity, so the rendered volume does not change;
    split  gradient > threshold and largest scale > `dense_scale` voxels: two children drawn from
           the parent's Gaussian, scales / 1.6, the parent's intensity (3DGS's rule);
    prune  |intensity| < `prune_intensity`, or a scale above `prune_scale` voxels, or a centre
           outside [-0.05, 1.05]^3.
The count never exceeds `max_gaussians` (the largest gradients are densified first). Adam's moments
follow their Gaussians through every change (new ones start at zero), as 3DGS does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PARAM_NAMES = ("means", "log_scales", "quats", "intensities")


@dataclass
class LearningRates:
    """Adam learning rates per parameter group; the means' decays exponentially to `means_final`."""
    means: float = 2e-4
    means_final: float = 2e-5
    log_scales: float = 5e-3
    quats: float = 1e-3
    intensities: float = 2e-2


@dataclass
class DensifyConfig:
    every: int = 100
    start: int = 100
    until: int = 3000
    grad_threshold: float = 5e-6     # mean |d loss / d mean| in voxel units (loss as in fit.py)
    dense_scale: float = 1.5         # voxels: clone at or below, split above
    prune_intensity: float = 2e-3
    prune_scale: float = 16.0        # voxels
    max_gaussians: int = 30000


class GaussianField:
    """K Gaussians fitted to one volume of `shape` (D, H, W)."""

    def __init__(self, gaussians: dict[str, torch.Tensor], shape, lrs: LearningRates | None = None,
                 device: str | torch.device = "cpu"):
        self.shape = tuple(int(n) for n in shape)
        self.lrs = lrs or LearningRates()
        self.device = torch.device(device)
        g = {k: v.detach().to(self.device, torch.float32) for k, v in gaussians.items()}
        params = {"means": g["means"], "log_scales": torch.log(g["scales"].clamp_min(1e-6)),
                  "quats": g["quats"], "intensities": g["intensities"]}
        self.params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        self.optimizer = torch.optim.Adam(
            [{"params": [self.params[k]], "name": k, "lr": getattr(self.lrs, k)} for k in PARAM_NAMES],
            lr=1e-3, eps=1e-15)
        self._edge = torch.tensor(self.shape, device=self.device, dtype=torch.float32)
        self.reset_stats()

    # ---- rendering ---------------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def scales(self) -> torch.Tensor:
        return torch.exp(self.params["log_scales"])

    def render(self, cutoff: float = 3.0, backend: str = "auto") -> torch.Tensor:
        """The volume [D, H, W] (differentiable in every parameter)."""
        from renderer_cupy import render_gaussians

        p = self.params
        vol = render_gaussians(p["means"][None], self.scales()[None], p["quats"][None], p["intensities"][None],
                               self.shape, cutoff=cutoff, backend=backend)
        return vol[0, 0]

    def state(self) -> dict[str, torch.Tensor]:
        """Plain tensors (means, scales, quats, intensities) on the CPU, for saving."""
        p = self.params
        return {"means": p["means"].detach().cpu(), "scales": self.scales().detach().cpu(),
                "quats": p["quats"].detach().cpu(), "intensities": p["intensities"].detach().cpu(),
                "shape": torch.tensor(self.shape)}

    # ---- optimisation ------------------------------------------------------------------------
    def step(self, iteration: int, total: int) -> None:
        """Adam step after `loss.backward()`; accumulates position gradients for density control."""
        grad = self.params["means"].grad
        if grad is not None:
            self.grad_accum += (grad.detach() / self._edge).norm(dim=-1)
            self.grad_count += 1
        frac = min(1.0, iteration / max(1, total))
        lr = self.lrs.means * (self.lrs.means_final / self.lrs.means) ** frac
        for group in self.optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def reset_stats(self) -> None:
        self.grad_accum = torch.zeros(self.num_gaussians, device=self.device)
        self.grad_count = 0

    # ---- density control ---------------------------------------------------------------------
    @torch.no_grad()
    def densify_and_prune(self, cfg: DensifyConfig, generator: torch.Generator | None = None) -> dict[str, int]:
        """One control step (see the module docstring). Returns the counts cloned / split / pruned."""
        p = self.params
        grad = self.grad_accum / max(1, self.grad_count)
        scale_vox = (self.scales() * self._edge).amax(-1)
        candidates = torch.nonzero(grad > cfg.grad_threshold).flatten()
        room = max(0, cfg.max_gaussians - self.num_gaussians)
        # a split adds one net Gaussian, a clone one: keep the largest gradients that fit
        candidates = candidates[torch.argsort(grad[candidates], descending=True)][:room]
        clone = candidates[scale_vox[candidates] <= cfg.dense_scale]
        split = candidates[scale_vox[candidates] > cfg.dense_scale]

        new = {k: [] for k in PARAM_NAMES}
        intens = p["intensities"].detach().clone()
        intens[clone] *= 0.5
        for k in PARAM_NAMES:
            src = intens if k == "intensities" else p[k].detach()
            new[k].append(src[clone])
        # split: two children per parent, drawn from N(mu, Sigma), scales / 1.6
        for _ in range(2):
            offsets = torch.randn(len(split), 3, device=self.device, generator=generator) * self.scales()[split]
            new["means"].append(p["means"][split] + _rotate(p["quats"][split], offsets))
            new["log_scales"].append(p["log_scales"][split] - math.log(1.6))
            new["quats"].append(p["quats"][split])
            new["intensities"].append(p["intensities"][split])

        keep = torch.ones(self.num_gaussians, dtype=torch.bool, device=self.device)
        keep[split] = False
        means = p["means"].detach()
        keep &= intens.abs() >= cfg.prune_intensity
        keep &= scale_vox <= cfg.prune_scale
        keep &= ((means > -0.05) & (means < 1.05)).all(-1)
        values = {k: torch.cat([(intens if k == "intensities" else p[k].detach())[keep], *new[k]]) for k in PARAM_NAMES}
        self._replace(values, keep, sum(len(t) for t in new["means"]))
        return {"cloned": int(len(clone)), "split": int(len(split)), "pruned": int((~keep).sum()) - int(len(split))}

    def _replace(self, values: dict[str, torch.Tensor], keep: torch.Tensor, num_new: int) -> None:
        """Swap in new parameter tensors; Adam's moments follow kept Gaussians, new ones start at 0."""
        for group in self.optimizer.param_groups:
            name = group["name"]
            old = group["params"][0]
            fresh = values[name].contiguous().requires_grad_(True)
            state = self.optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    pad = torch.zeros((num_new, *state[key].shape[1:]), device=self.device, dtype=state[key].dtype)
                    state[key] = torch.cat([state[key][keep], pad])
                self.optimizer.state[fresh] = state
            group["params"][0] = fresh
            self.params[name] = fresh
        self.reset_stats()


def _rotate(quats: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """R(q) v for [K, 4] quaternions (w, x, y, z) and [K, 3] vectors, as the renderer's geometry."""
    from renderer_cupy.geometry import quat_to_rotmat

    return (quat_to_rotmat(quats) @ v.unsqueeze(-1)).squeeze(-1)
