"""Fine-tuning loop for multi-label classification, resumable, and prediction from its checkpoint.

    <out>/checkpoint_latest.pt   every epoch (atomic): model, optimiser, schedule, epoch, RNG, settings
    <out>/checkpoint_final.pt    model, classes, geometry, encoder config (what `predict` needs)
    <out>/train.log, train.json, metrics.jsonl, training_curves.png
    <out>/valid/predictions.csv, evaluation.{json,md}, roc_curves.png   (at the end)

Recipe: multi-label BCE on whole volumes, AdamW (wd 0.05), linear warmup then cosine decay per step,
gradient clip 1.0, bf16 autocast on CUDA. `--resume` restores everything, including the RNG (CPU and
CUDA), so the resumed run continues the same case order. SIGINT/SIGTERM stop the epoch at the next
batch and exit 128 + signal; a resumed run redoes that epoch from the checkpoint of the one before.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medgmae_plans.runtime.atomic import save_torch_atomic
from medgmae_plans.runtime import StopSignals, UserError, progress, setup_run_log, write_run_json

from .. import run
from preprocessing.layouts.classification import LabelTable

from .data import Geometry, VolumeDataset, fraction_subset
from .evaluate import evaluate, write_predictions
from .model import Classifier, build_classifier
from .plots import training_curves_png

FORMAT = "medgmae-classify/1"
WHAT = "classification checkpoint"
LATEST, FINAL = run.LATEST, run.FINAL


@dataclass
class TrainSettings:
    dataset: str
    pretrained: str | None  # None = scratch
    preset: str = "tiny"
    fraction: float = 1.0
    epochs: int = 100
    batch_size: int = 2
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    flip: float = 0.5
    seed: int = 41
    device: str = "cpu"
    workers: int = 0
    val_every: int = 1
    n_boot: int = 1000
    geometry: dict = field(default_factory=lambda: Geometry().to_json())
    out: str = ""
    pbar: bool = True


@torch.no_grad()
def predict_probs(model: Classifier, folder: Path, cases, num_classes: int, device: torch.device,
                  pbar: bool = False) -> np.ndarray:
    """Sigmoid probabilities [N, K] for preprocessed `cases`, one volume at a time."""
    model.eval()
    ds = VolumeDataset(folder, cases, np.zeros((len(cases), num_classes), np.uint8))
    out = []
    for i in progress(range(len(ds)), enabled=pbar, desc="predict", unit="case"):
        x, _ = ds[i]
        with run.bf16_autocast(device):
            out.append(torch.sigmoid(model(x[None].to(device)).float()).cpu().numpy()[0])
    return np.stack(out)


def train_one_epoch(model: Classifier, ds: VolumeDataset, opt, sched, device: torch.device, epoch: int,
                    s: TrainSettings, stop: StopSignals, run_dir: run.RunFolder) -> list[float]:
    """One pass over the training cases in the epoch's own order; returns the batches' losses.

    A non-finite loss or gradient stops the run (`run.check_finite`, exit 2, nothing saved); a signal
    stops it after the batch (`Interrupted`)."""
    model.train()
    gen = torch.Generator().manual_seed(s.seed * 100003 + epoch)  # the case order is a function of the epoch
    loader = torch.utils.data.DataLoader(ds, batch_size=s.batch_size, shuffle=True, generator=gen,
                                         num_workers=s.workers, persistent_workers=False)
    losses = []
    for x, y in progress(loader, enabled=s.pbar, desc=f"epoch {epoch + 1}/{s.epochs}", unit="batch"):
        x, y = x.to(device, non_blocking=True), y.to(device)
        with run.bf16_autocast(device):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)  # one sigmoid a finding
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        run.check_finite(f"step {sched.last_epoch + 1} (epoch {epoch + 1})", sched.get_last_lr()[0],
                         run_dir.latest, loss.item(), grad_norm.item(), "--warmup-epochs")
        opt.step()
        sched.step()
        losses.append(loss.item())
        if stop.signum:  # mid-epoch: a resumed run redoes this epoch from the checkpoint of the one before
            raise run_dir.interrupted(stop.signum, f"in epoch {epoch + 1}", saved_at=epoch or None)
    return losses


def train(s: TrainSettings, table: LabelTable, folder: Path, resume: bool = False) -> dict:
    """Fine-tune on the `train` split (its `fraction` subset), validate on `valid`, write `s.out`."""
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    log = setup_run_log(out, "train")
    device = torch.device(s.device)
    geometry = Geometry.from_json(s.geometry)
    train_table, valid_table = table.subset("train"), table.subset("valid")
    if not len(train_table.cases):
        raise UserError(f"{s.dataset}: no cases in the train split")
    train_cases = fraction_subset(train_table.cases, s.fraction)
    idx = {c: i for i, c in enumerate(train_table.cases)}
    train_labels = train_table.labels[[idx[c] for c in train_cases]]

    run_dir = run.RunFolder(out, FORMAT, WHAT, resume, log, key="epoch")
    if resume and run_dir.state is None:
        raise UserError(f"--resume: {run_dir.latest} does not exist")
    torch.manual_seed(s.seed)
    np.random.seed(s.seed)
    random.seed(s.seed)
    model, info = build_classifier(num_classes=len(table.classes), size_zyx=geometry.size_zyx,
                                   pretrained=Path(s.pretrained) if s.pretrained else None, preset=s.preset)
    model.to(device)
    steps_per_epoch = math.ceil(len(train_cases) / s.batch_size)
    warmup = max(1, round(s.warmup_epochs * steps_per_epoch))
    opt = torch.optim.AdamW(run.param_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, run.lr_lambda(warmup, steps_per_epoch * s.epochs))
    start_epoch, history = 0, []
    if run_dir.state:
        start_epoch, history = run_dir.restore(model, opt, sched, asdict(s)), run_dir.state["history"]
    metrics = run_dir.metrics(start_epoch)
    log.info(f"{info['init']} encoder {info['encoder_config']}, token grid {info['token_grid']}; "
             f"{len(train_cases)}/{len(train_table.cases)} training cases (fraction {s.fraction}), "
             f"{len(valid_table.cases)} validation cases, {len(table.classes)} classes")

    ds = VolumeDataset(folder, train_cases, train_labels, flip=s.flip)
    t0 = time.time()
    with StopSignals() as stop:
        for epoch in range(start_epoch, s.epochs):
            losses = train_one_epoch(model, ds, opt, sched, device, epoch, s, stop, run_dir)
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
                      "seconds": round(time.time() - t0, 1)}
            if valid_table.cases and ((epoch + 1) % s.val_every == 0 or epoch + 1 == s.epochs):
                from .metrics import auroc, macro

                probs = predict_probs(model, folder, valid_table.cases, len(table.classes), device)
                record["val_macro_auroc"] = macro(auroc(valid_table.labels, probs))
            history.append(record)
            metrics.append(record)
            log.info(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            run_dir.save_latest(model, opt, sched, settings=asdict(s), epoch=epoch + 1, history=history)

    final = run_dir.final
    save_torch_atomic({"format": FORMAT, "model": model.state_dict(), "classes": table.classes,
                       "geometry": geometry.to_json(), "encoder_config": info["encoder_config"],
                       "token_grid": info["token_grid"], "init": info["init"], "dataset": s.dataset,
                       "train_cases": train_cases, "settings": asdict(s)}, final)
    if history:
        training_curves_png(history, out / "training_curves.png", f"{s.dataset}: {info['init']}, fraction {s.fraction}")
    results = {"final": str(final), "epochs": s.epochs, "train_cases": len(train_cases),
               "seconds": round(time.time() - t0, 1), "history": history}
    if valid_table.cases:
        probs = predict_probs(model, folder, valid_table.cases, len(table.classes), device, pbar=s.pbar)
        write_predictions(out / "valid" / "predictions.csv", valid_table.cases, table.classes, probs)
        ev = evaluate(out / "valid" / "predictions.csv", table, out / "valid", n_boot=s.n_boot, seed=s.seed,
                      title=f"{s.dataset} valid: {info['init']}, fraction {s.fraction}")
        results.update(val_macro_auroc=ev["macro_auroc"], val_macro_ci=ev["bootstrap"]["macro_ci"], val_auroc=ev["auroc"])
        log.info(f"valid macro AUROC {ev['macro_auroc']} (95% CI {ev['bootstrap']['macro_ci']})")
    write_run_json(out, "train", {**asdict(s), "model": {k: v for k, v in info.items() if k != "pretrain_metadata"}},
                   results)
    return results


def load_trained(path: Path, device: torch.device) -> tuple[Classifier, dict]:
    """The classifier of a training run (its folder or checkpoint_final.pt), ready for `predict_probs`."""
    path = Path(path)
    if path.is_dir():
        path = path / FINAL
    if not path.is_file():
        raise UserError(f"trained model {path} does not exist (train first, or pass the run folder)")
    ckpt = run.load_checkpoint(path, FORMAT, "final classification checkpoint", keys=("classes",))
    from ..networks import ViT3D
    from ..networks.pos_embed import set_token_grid

    encoder = set_token_grid(ViT3D(**ckpt["encoder_config"]), ckpt["token_grid"])
    model = Classifier(encoder, len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt
