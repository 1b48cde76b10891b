"""Training loop for registration, resumable, and loading a trained model.

    <out>/checkpoint_latest.pt   every --save-every steps and on SIGINT/SIGTERM (atomic): model, optimiser,
                                 schedule, step, settings, config, RNG (then exit 128 + signal)
    <out>/checkpoint_final.pt    model + config (what predict needs), val metrics
    <out>/train.log, train.json, metrics.jsonl, training_curves.png

Recipe (TransMorph's): batch 1, Adam lr 1e-4 with polynomial decay (power 0.9) over the steps,
LNCC + diffusion (+ Dice) weights 1, 1, 1. The training pair of step t is drawn from a generator
seeded by (seed, t), so a resumed run sees the same pairs as an uninterrupted one.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from medgmae_plans.runtime.atomic import save_torch_atomic
from medgmae_plans.runtime import StopSignals, UserError, progress, setup_run_log, write_run_json

from .. import run
from preprocessing.layouts.registration import Pair, RegistrationDataset
from .inference import register, score_pair
from .losses import RegistrationLoss
from .network import NETWORKS, build_model

FORMAT = "medgmae-register/1"
WHAT = "registration checkpoint"
LATEST, FINAL = run.LATEST, run.FINAL


@dataclass
class TrainSettings:
    dataset: str
    network: str = NETWORKS[0]  # vit (TransMorph-style with the ViT3D encoder) | voxelmorph
    pretrained: str | None = None  # None = scratch
    preset: str = "tiny"
    patch: int | None = None
    feature_size: int = 16
    diffeomorphic: bool = False
    steps: int = 1000
    lr: float = 1e-4
    w_ncc: float = 1.0
    w_diff: float = 1.0
    w_dice: float = 1.0
    ncc_kernel: int = 9
    seed: int = 41
    device: str = "cpu"
    val_every: int = 100
    save_every: int = 50
    out: str = ""
    pbar: bool = True


class Volumes:
    """Normalised images and label maps of a dataset, read on demand and kept (up to 64 cases)."""

    def __init__(self, ds: RegistrationDataset):
        self.ds = ds
        self.image = lru_cache(maxsize=64)(ds.image)
        self.label = lru_cache(maxsize=64)(ds.label)

    def tensors(self, pair: Pair, device, with_labels: bool):
        t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[None, None].to(device)
        m, f = t(self.image(pair.moving)), t(self.image(pair.fixed))
        if not with_labels:
            return m, f, None, None
        return m, f, t(self.label(pair.moving).astype(np.int64)), t(self.label(pair.fixed).astype(np.int64))


def model_config(s: TrainSettings, ds: RegistrationDataset) -> dict:
    return {"network": s.network, "shape_zyx": list(ds.shape), "preset": s.preset, "patch": s.patch,
            "feature_size": s.feature_size, "diffeomorphic": s.diffeomorphic}


def validate(model, ds: RegistrationDataset, vols: Volumes, pairs: list[Pair], device, pbar: bool = False) -> dict:
    """Mean Dice / % det(J)<=0 / EPE over `pairs`, plus the per-pair scores."""
    per_pair = {}
    for pair in progress(pairs, enabled=pbar, desc="validate", leave=False):
        ddf = register(model, vols.image(pair.moving), vols.image(pair.fixed), device)
        lab = ds.has_labels
        per_pair[pair.name] = score_pair(ddf, list(ds.labels), vols.label(pair.moving) if lab else None,
                                         vols.label(pair.fixed) if lab else None, ds.spacing, ds.flow(pair))
    return {**summarise(per_pair), "pairs": per_pair}


def summarise(per_pair: dict) -> dict:
    out = {}
    for key in ("mean_dice", "mean_dice_before", "nonpos_jacobian_pct", "epe_mm", "epe_mm_before"):
        vals = [p[key] for p in per_pair.values() if key in p and not np.isnan(p[key])]
        if vals:
            out[key] = float(np.mean(vals))
    return out


def train_step(model, loss_fn: RegistrationLoss, optimizer, scheduler, moving, fixed, moving_seg, fixed_seg, *,
               where: str, latest: Path) -> dict:
    """One optimiser step on one pair; returns the loss parts.

    A non-finite loss or gradient stops the run before the step (`run.check_finite`: a `UserError`
    naming `where` and the lr, exit 2, nothing saved)."""
    model.train()
    warped, ddf = model(moving, fixed)
    parts = loss_fn(warped, fixed, ddf, moving_seg, fixed_seg)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    run.check_finite(where, scheduler.get_last_lr()[0], latest, parts["loss"].item(), grad_norm.item())
    optimizer.step()
    scheduler.step()
    return parts


def train(s: TrainSettings, resume: bool = False) -> dict:
    out = Path(s.out)
    log = setup_run_log(out, "train")
    ds = RegistrationDataset(Path(s.dataset))
    run_dir = run.RunFolder(out, FORMAT, WHAT, resume, log)
    latest, final = run_dir.latest, run_dir.final
    if final.exists() and not latest.exists():
        raise UserError(f"{final} exists: that run is finished; choose another --out")
    config = model_config(s, ds)
    torch.manual_seed(s.seed)
    device = torch.device(s.device)
    model, info = build_model(config, Path(s.pretrained) if s.pretrained else None)
    config["encoder_config"] = info.get("encoder_config")
    model.to(device)
    with_labels = ds.has_labels and s.w_dice > 0
    loss_fn = RegistrationLoss(len(ds.labels) and max(ds.labels), s.w_ncc, s.w_diff, s.w_dice if with_labels else 0.0,
                               s.ncc_kernel)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, run.polynomial_decay(s.steps))
    step = 0
    if run_dir.state:  # checkpoints before 2026-12 saved no RNG (no draw depended on it): they resume too
        step = run_dir.restore(model, optimizer, scheduler, asdict(s))
    else:
        log.info(f"{info['network']} ({info['init']}) on {ds.name}: {len(ds.train_pairs())} training pairs, "
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {s.steps} steps")
        if "load_report" in info:
            log.info(f"pretrained encoder: {info['load_report']['loaded_keys']} keys loaded from {s.pretrained}")

    def save_latest():
        run_dir.save_latest(model, optimizer, scheduler, settings=asdict(s), step=step, config=config)

    vols, pairs = Volumes(ds), ds.train_pairs()
    val_pairs = ds.pairs("val")
    metrics = run_dir.metrics(step)
    start, t_steps = time.time(), 0.0
    bar = progress(total=s.steps, initial=step, enabled=s.pbar, desc="train")
    with StopSignals() as stop:
        while step < s.steps and not stop.signum:
            pair = pairs[int(np.random.default_rng([s.seed, step]).integers(len(pairs)))]
            t0 = time.time()
            parts = train_step(model, loss_fn, optimizer, scheduler, *vols.tensors(pair, device, with_labels),
                               where=f"step {step + 1} (pair {pair.name})", latest=latest)
            t_steps += time.time() - t0
            step += 1
            bar.update()
            rec = {"step": step, "pair": pair.name, **{k: round(float(v.detach()), 6) for k, v in parts.items()},
                   "lr": scheduler.get_last_lr()[0]}
            if s.val_every and (step % s.val_every == 0 or step == s.steps) and val_pairs:
                v = validate(model, ds, vols, val_pairs, device)
                rec.update({f"val_{k}": round(val, 6) for k, val in v.items() if k != "pairs"})
                log.info(f"step {step}: loss {rec['loss']:.4f} | val " +
                         ", ".join(f"{k} {val:.4f}" for k, val in v.items() if k != "pairs"))
            metrics.append(rec)
            if step % s.save_every == 0:
                save_latest()
        bar.close()
        if stop.signum:
            save_latest()
            raise run_dir.interrupted(stop.signum, f"at step {step}", saved_at=step)
    val = validate(model, ds, vols, val_pairs, device, s.pbar) if val_pairs else {}
    save_torch_atomic({"format": FORMAT, "model": model.state_dict(), "config": config, "step": step,
                       "dataset": ds.name, "labels": ds.labels, "info": _jsonable(info),
                       "val": {k: v for k, v in val.items() if k != "pairs"}}, final)
    if latest.exists():
        latest.unlink()
    from .plots import training_curves_png

    training_curves_png(metrics.path, out / "training_curves.png")
    results = {"steps": step, "wall_s": round(time.time() - start, 1),
               "s_per_step": round(t_steps / max(1, step), 3), "final_checkpoint": str(final),
               **{f"val_{k}": v for k, v in val.items() if k != "pairs"}, "val_pairs": val.get("pairs", {})}
    write_run_json(out, "train", {**asdict(s), "model": _jsonable(info)}, results)
    log.info(f"done: {final}; val " + ", ".join(f"{k} {v:.4f}" for k, v in val.items() if k != "pairs"))
    return results


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def load_trained(path: Path, device) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, checkpoint dict) from a training run folder or its checkpoint_final.pt."""
    path = Path(path)
    path = path / FINAL if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path} does not exist (train a model first)")
    ckpt = run.load_checkpoint(path, FORMAT, "final registration checkpoint", keys=("config",))
    model, _ = build_model(ckpt["config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the saved config ({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), ckpt
