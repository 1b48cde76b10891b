"""The pretraining loop: AdamW, warmup + cosine, clipping, bf16 on GPU, DDP, checkpoints, exact resume.

`pretrain(settings, cases, metadata)` is what the command runs in each process. Every process
builds the same model from the seed, draws its own masks (seed + rank) and its own crops (the
data stream of `preprocessing.pretrain_sampling`, sharded by rank); rank 0 writes everything.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from medgmae_plans.configurations import DEFAULT_CONFIGURATION, geometry
from medgmae_plans.runtime import StopSignals, UserError, check_range, progress
from preprocessing.pretrain_sampling import CropChunks, PretrainCase, SamplingConfig, centre_crop, iterate_batches

from .. import run
from ..networks import build_networks, network_config
from ..run import bf16_autocast, lr_lambda, param_groups
from . import checkpoint as ckpt
from .distributed import (DistInfo, all_reduce, barrier, cleanup_distributed, gather_objects, setup_distributed,
                          weights_digest)
from .model import PretrainModel, visible_mean_mse
from .plots import plot_loss_curve, plot_snapshot

# Training defaults per preset (table 9 for base/paper). tiny fills about 8 minutes of two idle CPU
# cores (3600 steps at ~0.12 s): measured on the phantom, its masked MSE falls to 0.56x that of
# predicting each crop's visible mean at 3600 steps, but only to 0.70x at 1200 (lr 3e-4 did no
# better, 3e-3 worse; 256 smaller Gaussians or grid-anchored queries no better at 1200 steps).
RECIPES = {
    "tiny": dict(steps=3600, batch_size=2, lr=1e-3, warmup=50),
    "base": dict(steps=100_000, batch_size=8, lr=1e-4, warmup=2000),
    "paper": dict(steps=100_000, batch_size=8, lr=1e-4, warmup=2000),
}


@dataclass
class PretrainSettings:
    out: str
    configuration: str = DEFAULT_CONFIGURATION
    preset: str = "tiny"
    decoder: str = "gaussian"
    gaussians: int | None = None
    max_scale: float | None = None
    patch: int | None = None
    crop_size: int | None = None
    mask_ratio: float = 0.75
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup: int | None = None
    weight_decay: float = 0.05
    clip: float = 1.0
    seed: int = 41
    device: str = "cpu"
    workers: int = 2
    sub_crops: int = 8
    crop_centres: str = "organs"   # "body": label-free, the labelled datasets' images only
    augment: bool = True
    resume: bool = False
    save_every: int = 250
    # Steps at which a final-format copy `checkpoint_step_<N>.pt` is kept: a learning curve from one
    # run (fine-tuning and the probe read it as they read checkpoint_final.pt).
    keep_steps: tuple = ()
    png_every: int = 250
    log_every: int = 10
    render_backend: str = "auto"
    # bf16 autocast of the forward and loss on a CPU with native bf16 (`--cpu-bf16`; CUDA always autocasts).
    # Off by default: on this project's AVX512-BF16 CPU the tiny preset's step was no faster (0.99x
    # gaussian, 0.97x voxel over 2000 steps) and its loss curve drifted 5-12 % from float32's
    # (benchmarks.pretrain_bf16, docs/results.md): the operators are too small for bf16 to pay.
    cpu_bf16: bool = False
    # One torch thread: the tiny model's operators are too small to split (two threads gained 10% on
    # idle cores) and a second thread waits on the first whenever another job holds a core (1.0 s
    # against 0.08 s a step beside a 2-thread job; medgmae_plans.runtime.threads). Feeding a GPU needs one.
    threads: int | None = 1
    pbar: bool = True
    datasets: list = field(default_factory=list)
    images: list = field(default_factory=list)

    def resolved(self) -> "PretrainSettings":
        """Fill the preset's recipe into the fields left at None."""
        recipe = RECIPES[self.preset]
        for key, value in recipe.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        return self

    def check(self) -> "PretrainSettings":
        """Refuse (`UserError`, naming the flag) values outside their ranges, before any model or file.

        A mask ratio of 0 trains nothing (no masked patch: loss and gradient 0) yet writes a "final"
        checkpoint, as does --steps 0; others would fail later with a traceback after the output
        folder and its log were made. The ranges are the ones `medgmae_pretrain --help` states.
        """
        s = self
        for flag, value, low in (("--steps", s.steps, 1), ("--batch-size", s.batch_size, 1),
                                 ("--sub-crops", s.sub_crops, 1), ("--save-every", s.save_every, 1),
                                 ("--png-every", s.png_every, 1), ("--log-every", s.log_every, 1),
                                 ("--gaussians", s.gaussians, 1), ("--warmup", s.warmup, 0),
                                 ("--workers", s.workers, 0), ("--threads", s.threads, 1)):
            check_range(flag, value, low)
        # 0 masks nothing, 1 leaves nothing visible
        check_range("--mask-ratio", s.mask_ratio, 0, 1, low_open=True, high_open=True)
        check_range("--lr", s.lr, 0, low_open=True)
        check_range("--max-scale", s.max_scale, 0, 1, low_open=True)
        for kept in s.keep_steps:
            check_range("--keep-steps", kept, 1, s.steps - 1)  # the last step's is checkpoint_final.pt
        geo = geometry(s.configuration)
        patch, crop = s.patch or geo.vit_patch, s.crop_size or geo.patch
        if crop < patch or crop % patch:
            raise UserError(f"--crop-size {crop}: must be a positive multiple of the ViT patch {patch} "
                            f"(e.g. {max(1, round(crop / patch)) * patch})")
        tokens = (crop // patch) ** 3
        if max(1, int(tokens * (1 - s.mask_ratio))) >= tokens:  # masking's rule: at least one token visible
            raise UserError(f"--crop-size {crop}: {tokens} ViT patch(es) of {patch} at --mask-ratio {s.mask_ratio:g} "
                            "leave none masked (the loss would be 0); give a crop of at least two patches an edge")
        return self
def make_logger(out: Path, info: DistInfo) -> logging.Logger:
    """Console + `log.txt` (appended) on rank 0; warnings only, console only, elsewhere."""
    logger = logging.getLogger(f"medgmae.pretrain.rank{info.rank}")
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.INFO if info.is_main else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s" if info.is_main else f"[rank {info.rank}] %(message)s"))
    logger.addHandler(console)
    if info.is_main:
        fh = logging.FileHandler(out / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(fh)
    return logger


def pretrain(settings: PretrainSettings, cases: Sequence[PretrainCase], metadata: dict | None = None) -> dict:
    """Run (or resume) one pretraining; returns the results dict (rank 0's view)."""
    s = settings.resolved().check()
    if s.threads:
        torch.set_num_threads(s.threads)
    run.resolve_device(s.device)  # a GPU that is not there: one line, before anything starts
    info = setup_distributed(s.device)
    try:
        return _pretrain(s, cases, metadata or {}, info)
    finally:
        cleanup_distributed()


def _pretrain(s: PretrainSettings, cases, metadata: dict, info: DistInfo) -> dict:
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = run.RunFolder(out, ckpt.FORMAT, ckpt.WHAT, s.resume)  # before the log: a refusal writes nothing
    log = run_dir.log = make_logger(out, info)
    latest, final = run_dir.latest, run_dir.final

    torch.manual_seed(s.seed)  # identical initial weights on every rank
    model, meta = build_model(s, metadata, info.device)
    optimizer = torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(s.warmup, s.steps))
    torch.manual_seed(s.seed + 1000 * info.rank)  # masks and drop-path differ per rank
    step = 0
    if run_dir.state:
        # The settings and the model's description together say what the run is: the metadata holds
        # what the settings leave to the preset (patch and crop size, the network) and the data's part.
        # A run saved before --crop-centres existed centred its crops on the organs.
        saved = {"crop_centres": "organs", **run_dir.state["settings"], **run_dir.state["metadata"]}
        saved.setdefault("label_free", not run_dir.state["metadata"].get("datasets"))
        step = run_dir.restore(model, optimizer, scheduler, {**asdict(s), **meta}, saved=saved,
                               rank=info.rank, world_size=info.world_size)
    elif s.resume:
        log.info(f"--resume: no {latest}, starting from step 0")
    metrics = run_dir.metrics(step) if info.is_main else None
    if step >= s.steps and final.exists():
        # A rerun of a finished run (e.g. the main job a second time): keep what is there.
        log.info(f"already finished at step {step}; {final} is up to date")
        return run_results(metrics, step, final, wall_s=0.0)

    ddp = DistributedDataParallel(model) if info.distributed else model
    crop = meta["crop_size"][0]
    sampling = SamplingConfig(crop_size=crop, sub_crops=s.sub_crops, augment=s.augment, crop_centres=s.crop_centres)
    chunks = CropChunks(cases, sampling, seed=s.seed, rank=info.rank, world_size=info.world_size)
    batches = iterate_batches(chunks, s.batch_size, start_step=step, workers=s.workers)
    # Snapshots always show the same crop (the centre of the first case) with the same mask, so
    # the pictures of successive steps can be compared. It is loaded at the first snapshot, after
    # the data workers have forked: reading a case here first (blosc2 threads) deadlocked them.
    preview = None
    if info.is_main:
        log.info(f"pretraining {s.decoder} decoder, preset {s.preset}: {sum(p.numel() for p in model.parameters())/1e6:.2f} M "
                 f"parameters, crop {crop}^3, patch {meta['patch_size']}, {len(cases)} cases, "
                 f"{info.world_size} process(es) on {info.device.type}, batch {s.batch_size}/process, "
                 f"steps {step}->{s.steps}")

    def save_latest():
        rng = gather_objects(run.capture_rng(), info)
        if info.is_main:  # the RNG of every rank, so that each continues its own streams
            run_dir.save_latest(model, optimizer, scheduler, settings=asdict(s), rng=rng,
                               metadata={**meta, "step": step}, step=step, world_size=len(rng))
            plot_loss_curve(metrics.path, out / "loss_curve.png", f"{s.decoder} / {s.preset}")

    bar = progress(total=s.steps, initial=step, enabled=s.pbar and info.is_main, desc="pretrain")
    report = Report(metrics, log, bar, crops_per_step=s.batch_size * info.world_size)
    # Closing the batch stream stops its worker processes now: left to interpreter exit, the
    # workers (which ignore SIGTERM, see pretrain_sampling) would keep the process from ending.
    with StopSignals() as sig, closing(batches):
        while step < s.steps:
            imgs = next(batches).to(info.device, non_blocking=True)
            loss, grad_norm, signum = train_step(ddp, model, imgs, optimizer, scheduler, s, info, step, sig)
            step += 1
            report.add(loss)
            if info.is_main and (step % s.log_every == 0 or step == s.steps):
                report.write(step, s.steps, scheduler.get_last_lr()[0], grad_norm)
            if info.is_main and (step % s.png_every == 0 or step == s.steps):
                if preview is None:
                    preview = torch.from_numpy(centre_crop(chunks.cases[0], crop))[None].to(info.device)
                snapshot(model, preview, out / "snapshots" / f"step_{step:07d}.png", f"step {step}")
            if step in s.keep_steps and info.is_main:
                ckpt.save_final(kept_checkpoint(out, step), model=model, step=step, metadata=meta)
            if step % s.save_every == 0 and step < s.steps:
                save_latest()
            if signum:
                save_latest()
                raise run_dir.interrupted(signum, f"at step {step}", saved_at=step)
    bar.close()
    save_latest()
    if info.distributed:  # one process has nothing to compare its weights with
        digest = weights_digest(model, info)
        log.info(f"weights identical on all {info.world_size} ranks (sha256 {digest[:16]})")
    if info.is_main:
        ckpt.save_final(final, model=model, step=step, metadata=meta)
        log.info(f"finished at step {step}; wrote {final}")
    barrier(info)
    return run_results(metrics, step, final, wall_s=time.time() - report.start)


def kept_checkpoint(out: Path, step: int) -> Path:
    """The final-format checkpoint `--keep-steps` keeps at `step`."""
    return Path(out) / f"checkpoint_step_{step:07d}.pt"


def build_model(s: PretrainSettings, metadata: dict, device) -> tuple[PretrainModel, dict]:
    """The model on `device`, and the checkpoint metadata that describes it (what fine-tuning reads)."""
    geo = geometry(s.configuration)  # crop and ViT patch unless given: 96 / 16 at 1.5 mm, 48 / 8 at 3 mm
    netcfg = network_config(s.preset, patch_size=s.patch or geo.vit_patch, crop_size=s.crop_size or geo.patch,
                            num_gaussians=s.gaussians, max_scale=s.max_scale)
    encoder, decoder = build_networks(netcfg, s.decoder)
    model = PretrainModel(encoder, decoder, s.decoder, s.mask_ratio, s.render_backend,
                          netcfg["gaussians"]["render_cutoff"]).to(device)
    meta = {
        **metadata, "configuration": s.configuration, "preset": s.preset, "decoder_type": s.decoder,
        "patch_size": encoder.config["patch_size"],
        "crop_size": [encoder.config["img_size"]] * 3, "mask_ratio": s.mask_ratio,
        "num_gaussians": netcfg["gaussians"]["num_gaussians"], "encoder_class": "medgmae_trainers.networks.ViT3D",
        "encoder_config": encoder.config, "network_config": netcfg, "seed": s.seed,
        # which labels pretraining saw: none when its crops were body-centred (the run record says which)
        "crop_centres": s.crop_centres, "label_free": s.crop_centres == "body" or not metadata.get("datasets"),
    }
    return model, meta


def train_step(ddp, model: PretrainModel, imgs: torch.Tensor, optimizer, scheduler, s: PretrainSettings,
               info: DistInfo, step: int, sig: StopSignals) -> tuple[float, float, int]:
    """One optimiser step on every rank: (mean loss, max gradient norm, the signal any rank got, or 0)."""
    ddp.train()
    with bf16_autocast(info.device, cpu=s.cpu_bf16):
        outputs = ddp(imgs)
    loss = outputs["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
    # Two small all-reduces a step: the mean loss with whether any rank got a signal, and the max grad norm.
    stats = all_reduce(torch.tensor([loss.item() / info.world_size, float(sig.signum)]), info)
    gmax = all_reduce(grad_norm.detach().float().reshape(1).cpu(), info, op=torch.distributed.ReduceOp.MAX)
    mean_loss, max_norm = stats[0].item(), gmax.item()
    run.check_finite(f"step {step + 1}", scheduler.get_last_lr()[0], Path(s.out) / run.LATEST, mean_loss, max_norm,
                     "--warmup")
    optimizer.step()
    scheduler.step()
    return mean_loss, max_norm, int(stats[1].item())


class Report:
    """Rank 0's account of the run: the loss averaged over each logging window, into metrics.jsonl,
    the log and the progress bar."""

    def __init__(self, metrics: run.MetricsLog | None, log: logging.Logger, bar, crops_per_step: int):
        self.metrics, self.log, self.bar, self.crops_per_step = metrics, log, bar, crops_per_step
        self.window, self.start = [], time.time()
        self.t_window = self.start

    def add(self, loss: float) -> None:
        self.window.append(loss)
        self.bar.update(1)

    def write(self, step: int, total: int, lr: float, grad_norm: float) -> None:
        dt = time.time() - self.t_window
        row = {"step": step, "loss": sum(self.window) / len(self.window), "lr": lr, "grad_norm": grad_norm,
               "sec_per_step": dt / len(self.window),
               "crops_per_s": len(self.window) * self.crops_per_step / max(dt, 1e-9),
               "elapsed_s": time.time() - self.start}
        self.metrics.append(row)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}")
        self.log.info(f"step {step}/{total} loss {row['loss']:.5f} lr {lr:.2e} {row['sec_per_step']:.2f} s/step")
        self.window, self.t_window = [], time.time()


def run_results(metrics: run.MetricsLog | None, step: int, final: Path, wall_s: float) -> dict:
    rows = metrics.rows() if metrics else []
    return {"step": step, "final_loss": rows[-1]["loss"] if rows else None,
            "first_loss": rows[0]["loss"] if rows else None, "checkpoint": str(final), "wall_s": wall_s}


def snapshot(model: PretrainModel, imgs: torch.Tensor, png: Path, title: str) -> None:
    """Save the picture of one crop without disturbing the training RNG streams."""
    devices = [imgs.device] if imgs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)  # the same mask in every snapshot
        was_training = model.training
        model.eval()
        out = model.reconstruct(imgs.float())
        model.train(was_training)
    g = out.get("gaussians")
    gaussians = None if g is None else {k: g[k][0].float().cpu().numpy() for k in ("means", "scales", "intensities")}
    plot_snapshot(imgs[0, 0].float().cpu().numpy(), out["voxel_mask"][0].cpu().numpy(),
                  out["pred"][0, 0].float().cpu().numpy(), png, gaussians=gaussians,
                  title=f"{title}: masked MSE {out['loss'].item():.4f} "
                        f"(predicting the visible mean: {visible_mean_mse(imgs, out['voxel_mask']):.4f})")

