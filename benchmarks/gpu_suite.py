"""The GPU checks in one prepared run, for a lent CUDA machine (issue 19): one call, about 3 minutes
on an H100/H200 (budget 4), leaving room for a rerun inside a 15-minute lease.

    python -m benchmarks.gpu_suite --out DIR             # on one CUDA GPU
    python -m benchmarks.gpu_suite --out DIR --smoke     # the same steps at toy sizes on the CPU
    python -m benchmarks.gpu_suite --out DIR --only renderer unetr_step

Steps, in order (a step that cannot run here is skipped with its reason; once the budget is spent
the remaining ones are skipped):
  cupy_tests      pytest tests/test_renderer_cupy.py: NVRTC builds and the CUDA kernels against the
                  dense reference, gradcheck, streams (every test must run, none skip)
  renderer        the paper's setting (K=512, 96^3, 75% masked, B=8) forward and backward, cupy
                  against dense torch on the same GPU: seconds, speed-up, forward agreement
  pretrain_ratio  base preset step time, Gaussian vs voxel-MAE decoder, bf16 autocast (target: LIMITS)
  pretrain_run    TRAIN_STEPS base pretraining steps on synthetic crops (the trainer's step, bf16):
                  finite loss, its mean over the last window below that over the first
  unetr_step      UNETR (base encoder, MONAI decoder blocks) fine-tuning steps on CUDA, bf16 autocast;
                  skipped where MONAI is not installed

Writes DIR/gpu_suite.json (rewritten after every step, so a run cut short keeps what it measured)
and DIR/gpu_suite.log. Exit status: 0 when no step failed, 1 when one did, 2 on bad arguments or
without a CUDA device (unless --smoke).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import platform
import re
import subprocess
import sys
import time
import traceback
from contextlib import closing
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.pretrain import LIMITS, synthetic_cases, time_steps
from benchmarks.renderer import make_setting, time_backend

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("cupy_tests", "renderer", "pretrain_ratio", "pretrain_run", "unetr_step")
BUDGET_S = 240
TRAIN_STEPS = 200
RENDER_TOLERANCE = 1e-4  # float32 kernels against the float32 dense reference, relative to its max
JSON_NAME, LOG_NAME = "gpu_suite.json", "gpu_suite.log"


@dataclass(frozen=True)
class Sizes:
    """Everything the steps' sizes depend on: the GPU run, and the toy run on the CPU."""

    device: str
    render_backend: str
    render: dict  # make_setting's batch, gaussians, size, mask_ratio, patch
    render_repeats: int
    preset: str
    patch: int | None  # None: the preset's
    crop: int | None  # None: the preset's
    ratio_steps: int
    ratio_warmup: int
    train_steps: int
    train_workers: int
    log_every: int
    unetr_steps: int
    cupy_tests: tuple  # pytest arguments
    cupy_timeout_s: int
    every_cupy_test_runs: bool  # on a GPU a skipped CuPy test means CuPy or CUDA is broken
    judge_time: bool  # toy sizes time one cold step (numba's first compile): their ratio is printed, not judged


GPU = Sizes(device="cuda", render_backend="cupy",
            render=dict(batch=8, gaussians=512, size=96, mask_ratio=0.75, patch=16), render_repeats=5,
            preset="base", patch=None, crop=None, ratio_steps=5, ratio_warmup=2, train_steps=TRAIN_STEPS,
            train_workers=6, log_every=10, unetr_steps=3, cupy_tests=("tests/test_renderer_cupy.py",),
            cupy_timeout_s=100, every_cupy_test_runs=True, judge_time=True)
SMOKE = Sizes(device="cpu", render_backend="cpu",
              render=dict(batch=1, gaussians=16, size=24, mask_ratio=0.75, patch=8), render_repeats=1,
              preset="tiny", patch=8, crop=16, ratio_steps=1, ratio_warmup=0, train_steps=3, train_workers=0,
              log_every=1, unetr_steps=1, cupy_tests=("tests/test_renderer_cupy.py", "-k", "compile"),
              cupy_timeout_s=120, every_cupy_test_runs=False, judge_time=False)


class Skipped(Exception):
    """The step cannot run here; the message says why."""


@dataclass
class Context:
    sizes: Sizes
    log: logging.Logger

    @property
    def device(self) -> torch.device:
        return torch.device(self.sizes.device)

    @property
    def crop(self) -> int:
        from medgmae_trainers.networks import network_config

        cfg = network_config(self.sizes.preset, patch_size=self.sizes.patch, crop_size=self.sizes.crop)
        return cfg["encoder"]["img_size"]

    @property
    def batch_size(self) -> int:
        from medgmae_trainers.pretrain.trainer import RECIPES

        return RECIPES[self.sizes.preset]["batch_size"]

    @cached_property
    def cases(self) -> list:
        return synthetic_cases()

    def crops(self, n: int) -> torch.Tensor:
        """n synthetic crops [n, 1, c, c, c] on the device, without augmentation."""
        from preprocessing.pretrain_sampling import CropChunks, SamplingConfig, iterate_batches

        chunks = CropChunks(self.cases, SamplingConfig(crop_size=self.crop, sub_crops=8, augment=False), seed=41)
        batches = iterate_batches(chunks, n)
        try:
            return next(batches).to(self.device)
        finally:
            batches.close()


def _sync(ctx: Context) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)


def step_cupy_tests(ctx: Context) -> dict:
    if importlib.util.find_spec("pytest") is None:
        raise Skipped("pytest is not installed here")
    cmd = [sys.executable, "-m", "pytest", *ctx.sizes.cupy_tests, "-q", "-rs", "-p", "no:cacheprovider"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx.sizes.cupy_timeout_s)
    ctx.log.info(done.stdout[-6000:] + done.stderr[-2000:])
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", done.stdout)}
    ok = done.returncode == 0 and counts.get("passed", 0) > 0
    if ctx.sizes.every_cupy_test_runs:
        ok = ok and not counts.get("skipped")
    return {"status": "ok" if ok else "failed", "command": " ".join(cmd[1:]), "returncode": done.returncode,
            **counts}


def step_renderer(ctx: Context) -> dict:
    from renderer_cupy import render_gaussians

    r, device, size = ctx.sizes.render, ctx.device, ctx.sizes.render["size"]
    setting = make_setting(r["batch"], r["gaussians"], size, r["mask_ratio"], r["patch"], device)
    fast = time_backend(ctx.sizes.render_backend, setting, size, ctx.sizes.render_repeats, device)
    dense = time_backend("torch", setting, size, 1, device, warmup=device.type == "cuda")
    means, scales, quats, intensities, mask, _ = setting
    with torch.no_grad():
        got = render_gaussians(means, scales, quats, intensities, (size,) * 3, mask=mask,
                               backend=ctx.sizes.render_backend)
        want = render_gaussians(means, scales, quats, intensities, (size,) * 3, mask=mask, backend="torch")
    error = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    return {"status": "ok" if error <= RENDER_TOLERANCE else "failed", "setting": r,
            "backend": ctx.sizes.render_backend, "forward_s": fast[0], "backward_s": fast[1],
            "torch_forward_s": dense[0], "torch_backward_s": dense[1],
            "speedup_vs_torch": (dense[0] + dense[1]) / (fast[0] + fast[1]),
            "forward_rel_error": error, "tolerance": RENDER_TOLERANCE}


def step_pretrain_ratio(ctx: Context) -> dict:
    args = SimpleNamespace(preset=ctx.sizes.preset, patch=ctx.sizes.patch, crop_size=ctx.sizes.crop, weights=[],
                           warmup=ctx.sizes.ratio_warmup, steps=ctx.sizes.ratio_steps)
    times = time_steps(args, ctx.crops(ctx.batch_size), ctx.device)  # bf16 autocast on CUDA
    ratio = times["gaussian"] / times["voxel"]
    limit = LIMITS[ctx.device.type]
    within = ratio <= limit or not ctx.sizes.judge_time
    return {"status": "ok" if within else "failed", "judged": ctx.sizes.judge_time, "preset": ctx.sizes.preset,
            "batch_size": ctx.batch_size, "ms_per_step": {k: v * 1000 for k, v in times.items()},
            "gaussian_over_voxel": ratio, "target": limit}


def step_pretrain_run(ctx: Context) -> dict:
    """The trainer's step (its model, optimiser groups, schedule, clipping, bf16 autocast) in a plain
    loop: the trainer itself also needs tqdm and matplotlib, which the lent GPU machines lack."""
    from medgmae_trainers.pretrain.trainer import PretrainSettings, build_model, param_groups
    from medgmae_trainers.run.optim import lr_lambda
    from preprocessing.pretrain_sampling import CropChunks, SamplingConfig, iterate_batches

    s = ctx.sizes
    # A short run: warm up over a tenth of it, not the recipe's 2000 steps, so the loss can fall.
    run = PretrainSettings(out="", preset=s.preset, patch=s.patch, crop_size=s.crop, steps=s.train_steps,
                           warmup=max(1, s.train_steps // 10), device=s.device).resolved()
    torch.manual_seed(run.seed)
    model, _ = build_model(run, {}, ctx.device)
    optimizer = torch.optim.AdamW(param_groups(model, run.weight_decay), lr=run.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(run.warmup, run.steps))
    # No batchgenerators (the crop augmentation) on the lent GPU machines: plain crops there.
    augment = importlib.util.find_spec("batchgenerators") is not None
    chunks = CropChunks(ctx.cases, SamplingConfig(crop_size=ctx.crop, sub_crops=run.sub_crops, augment=augment),
                        seed=run.seed)
    losses = []
    t0 = time.perf_counter()
    with closing(iterate_batches(chunks, run.batch_size, workers=s.train_workers)) as batches:
        for _ in range(run.steps):
            imgs = next(batches).to(ctx.device, non_blocking=True)
            with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
                loss = model(imgs)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    windows = [sum(losses[i:i + s.log_every]) / len(losses[i:i + s.log_every])
               for i in range(0, len(losses), s.log_every)]
    finite = all(math.isfinite(v) for v in losses)
    falling = len(windows) > 1 and windows[-1] < windows[0]
    return {"status": "ok" if finite and falling else "failed", "steps": len(losses), "batch_size": run.batch_size,
            "augment": augment, "s_per_step": (time.perf_counter() - t0) / max(1, len(losses)),
            "finite": finite, "falling": falling, "window": s.log_every, "window_losses": windows}


def step_unetr(ctx: Context) -> dict:
    if importlib.util.find_spec("monai") is None:
        raise Skipped("MONAI is not installed here (UNETR's decoder blocks come from it)")
    from medgmae_trainers.networks.presets import UNETR_FEATURE_SIZE, network_config
    from medgmae_trainers.unetr import UNETR

    enc = network_config(ctx.sizes.preset, patch_size=ctx.sizes.patch, crop_size=ctx.sizes.crop)["encoder"]
    net = UNETR(1, 2, img_size=enc["img_size"], patch_size=enc["patch_size"], hidden_size=enc["embed_dim"],
                num_layers=enc["depth"], num_heads=enc["num_heads"],
                feature_size=UNETR_FEATURE_SIZE.get(ctx.sizes.preset, 16)).to(ctx.device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    imgs = ctx.crops(2)
    labels = (imgs[:, 0] > 0.3).long()  # the synthetic organ and body as a two-class target
    losses, times = [], []
    for _ in range(1 + ctx.sizes.unetr_steps):  # the first step is warm-up
        t0 = time.perf_counter()
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
            logits = net(imgs)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(ctx)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    finite = all(math.isfinite(v) for v in losses)
    return {"status": "ok" if finite else "failed", "img_size": enc["img_size"], "batch_size": 2,
            "s_per_step": sorted(times[1:])[len(times[1:]) // 2], "losses": losses}


STEP_FUNCTIONS = {"cupy_tests": step_cupy_tests, "renderer": step_renderer, "pretrain_ratio": step_pretrain_ratio,
                  "pretrain_run": step_pretrain_run, "unetr_step": step_unetr}
assert tuple(STEP_FUNCTIONS) == STEPS


def run_step(name: str, ctx: Context) -> dict:
    t0 = time.perf_counter()
    try:
        result = STEP_FUNCTIONS[name](ctx)
    except Skipped as why:
        result = {"status": "skipped", "reason": str(why)}
    except Exception as err:  # one broken step must not hide the others' figures
        ctx.log.error(traceback.format_exc())
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return {**result, "seconds": round(time.perf_counter() - t0, 2)}


def environment(sizes: Sizes) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": sizes.device}
    if sizes.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    for module in ("cupy", "numba", "monai", "pytest"):
        spec = importlib.util.find_spec(module)
        info[module] = None if spec is None else _version(module)
    return info


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version({"cupy": "cupy-cuda13x"}.get(module, module))
    except Exception:
        return "installed"


@dataclass
class Report:
    path: Path
    budget_s: float
    smoke: bool
    environment: dict
    steps: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def write(self) -> None:
        failed = [n for n, r in self.steps.items() if r["status"] == "failed"]
        body = {**asdict(self), "path": None, "within_budget": self.wall_s <= self.budget_s, "failed": failed}
        del body["path"]
        self.path.write_text(json.dumps(body, indent=2, default=str) + "\n")


def make_logger(out: Path) -> logging.Logger:
    log = logging.getLogger("medgmae.gpu_suite")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    for handler in (logging.FileHandler(out / LOG_NAME, mode="w"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    return log


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="See docs/renderer_gpu.md for what each figure means.")
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_suite.json and gpu_suite.log")
    p.add_argument("--only", nargs="+", choices=STEPS, help="run these steps (default: all, in order)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help=f"skip the remaining steps once this many seconds have passed (default {BUDGET_S})")
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the suite itself")
    args = p.parse_args(argv)
    if not args.budget_s > 0:
        p.error(f"--budget-s must be positive, got {args.budget_s}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a folder")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device visible to torch (use --smoke to check the suite on the CPU)",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log = make_logger(args.out)
    report = Report(args.out / JSON_NAME, args.budget_s, args.smoke, environment(sizes))
    ctx = Context(sizes, log)
    start = time.perf_counter()
    for name in args.only or STEPS:
        if time.perf_counter() - start > args.budget_s:
            report.steps[name] = {"status": "skipped", "reason": f"the {args.budget_s:.0f} s budget was spent"}
        else:
            log.info(f"== {name}")
            report.steps[name] = run_step(name, ctx)
            log.info(f"{name}: {json.dumps(report.steps[name], default=str)}")
        report.wall_s = round(time.perf_counter() - start, 2)
        report.write()
    failed = [n for n, r in report.steps.items() if r["status"] == "failed"]
    log.info(f"done in {report.wall_s:.0f} s (budget {args.budget_s:.0f} s); "
             + (f"failed: {', '.join(failed)}" if failed else "no step failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
