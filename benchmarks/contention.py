"""How pretraining and fine-tuning share the cores: the same short runs alone, beside a busy loop,
and beside a 2-thread torch loop, in one run.

    python -m benchmarks.contention [-d Phantom] [--images PhantomUnlabeled] [-c 3d_lowres]
                                    [--pretrain-steps 120] [--finetune-iters 20]

Each run is the console command with its defaults (nothing about threads is passed), so what is
measured is what a user gets:
- `medgmae_pretrain` (tiny preset): the median `sec_per_step` of its metrics.jsonl rows, the first
  row (start-up) left out;
- `medgmae_train ... --init scratch --preset tiny` for 3 epochs of `--finetune-iters` iterations:
  the median epoch time of epochs 1 and 2 (nnU-Net's own timestamps in the checkpoint), per iteration.
The competitors run for the whole measurement: `busy` is one Python thread spinning, `torch2` a torch
matmul loop on two threads (with torch's default OpenMP settings, as another user's job would).
On two cores, one extra runnable thread leaves us 2 of 3 threads' share (ideal 1.5x) and a 2-thread
job one core (ideal 2x). Targets: <= 1.8x beside `busy`, <= 2.5x beside `torch2`.
Runs go to a temporary results folder; the preprocessed data is read from $nnUNet_preprocessed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITORS = {
    "alone": None,
    "busy": "while True: pass",
    "torch2": "import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nwhile True: a @ a",
}
TARGETS = {"busy": 1.8, "torch2": 2.5}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.contention", description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset", default="Phantom", help="preprocessed labelled dataset (default Phantom)")
    p.add_argument("--images", default=None, help="also pretrain on this unlabelled collection")
    p.add_argument("-c", "--configuration", default="3d_lowres", help="configuration (default 3d_lowres)")
    p.add_argument("--pretrain-steps", type=int, default=120, help="pretraining steps per run (default 120)")
    p.add_argument("--finetune-iters", type=int, default=20, help="fine-tuning iterations per epoch (default 20)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def pretrain_step_s(args, out: Path, env: dict) -> float:
    cmd = [command("medgmae_pretrain"), "-d", args.dataset, "-c", args.configuration, "--steps",
           str(args.pretrain_steps), "--log-every", "10", "--png-every", str(10 ** 6), "--out", str(out), "--no-pbar"]
    if args.images:
        cmd += ["--images", args.images]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["sec_per_step"] for r in rows[1:])


def finetune_iteration_s(args, results: Path, tag: str, env: dict) -> float:
    import torch

    trainer = f"MedGMAETrainer_scratch_f10_{tag}"
    cmd = [command("medgmae_train"), args.dataset, args.configuration, "--init", "scratch", "--preset", "tiny",
           "--fraction", "0.1", "--epochs", "3", "--iters-per-epoch", str(args.finetune_iters), "--trainer", trainer,
           "--no-pbar"]
    subprocess.run(cmd, env={**env, "nnUNet_results": str(results)}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = next(results.glob(f"*/{trainer}__*/fold_0/checkpoint_final.pth"))
    log = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    epochs = [end - start for start, end in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
    return statistics.median(epochs[1:]) / args.finetune_iters


def main(argv=None) -> int:
    args = parse_args(argv)
    env = dict(os.environ)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="contention_") as tmp:
        for name, code in COMPETITORS.items():
            rival = None if code is None else subprocess.Popen([sys.executable, "-c", code])
            try:
                time.sleep(1.0 if rival else 0.0)  # the rival is running before we start
                figures[name] = {
                    "pretrain_s_per_step": pretrain_step_s(args, Path(tmp) / f"pretrain_{name}", env),
                    "finetune_s_per_iteration": finetune_iteration_s(args, Path(tmp) / f"results_{name}", name, env),
                }
            finally:
                if rival:
                    rival.kill()
                    rival.wait()
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures[name].items()), flush=True)
    alone = figures["alone"]
    print(f"\n{'beside':>8} {'pretrain s/step':>16} {'ratio':>6} {'finetune s/iter':>16} {'ratio':>6} {'target':>7}")
    for name, row in figures.items():
        ratios = {k: row[k] / alone[k] for k in row}
        row.update({f"{k}_ratio": v for k, v in ratios.items()})
        print(f"{name:>8} {row['pretrain_s_per_step']:>16.3f} {ratios['pretrain_s_per_step']:>5.2f}x "
              f"{row['finetune_s_per_iteration']:>16.3f} {ratios['finetune_s_per_iteration']:>5.2f}x "
              f"{TARGETS.get(name, 1.0):>6.1f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
