"""Renderer timing: forward, backward and total per volume for each available backend, and the
speed-up over the dense ``torch`` backend measured in the same run on the same device.

    python -m benchmarks.renderer            # the paper's setting: K=512, 96^3, 75% masked
    python -m benchmarks.renderer --quick    # a small setting that runs in seconds
    python -m benchmarks.renderer --device cuda --batch 8

Setting (MedGMAE appendix 7.4 at initialisation): positions uniform in [0,1]^3, random rotations,
scales 0.5*sigmoid(N(-1.386, 0.3)) per axis, intensities sigmoid(N(-0.405, 0.3)); the mask hides
75% of the 16^3 patches, as the pretraining loss sees it, and only masked voxels are rendered.
The loss is the masked MSE against a random target, so backward gets a dense cotangent.
"""
from __future__ import annotations

import argparse
import time

import torch

from renderer_cupy import render_gaussians
from renderer_cupy.backend_cupy import cupy_available


def make_setting(batch, gaussians, size, mask_ratio, patch, device, seed=41):
    g = torch.Generator().manual_seed(seed)
    B, K = batch, gaussians
    means = torch.rand(B, K, 3, generator=g)
    scales = 0.5 * torch.sigmoid(torch.randn(B, K, 3, generator=g) * 0.3 - 1.386)
    quats = torch.nn.functional.normalize(torch.randn(B, K, 4, generator=g), dim=-1)
    intensities = torch.sigmoid(torch.randn(B, K, generator=g) * 0.3 - 0.405)
    cells = -(-size // patch)
    hidden = torch.rand(B, cells, cells, cells, generator=g).flatten(1).argsort(1) < round(mask_ratio * cells**3)
    hidden = hidden.view(B, cells, cells, cells)
    mask = hidden.repeat_interleave(patch, 1).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    mask = mask[:, :size, :size, :size].contiguous()
    target = torch.rand(B, 1, size, size, size, generator=g)
    return [t.to(device) for t in (means, scales, quats, intensities, mask, target)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backend(backend, setting, size, repeats, device, warmup=True):
    """(forward seconds, backward seconds) per call, median over ``repeats`` calls, after one
    untimed warm-up call when ``warmup`` (the first call compiles kernels: numba / NVRTC)."""
    means, scales, quats, intensities, mask, target = setting
    params = [t.clone().requires_grad_() for t in (means, scales, quats, intensities)]
    fwd, bwd = [], []
    for i in range(repeats + int(warmup)):
        _sync(device)
        t0 = time.perf_counter()
        out = render_gaussians(*params, (size,) * 3, mask=mask, backend=backend)
        _sync(device)
        t1 = time.perf_counter()
        loss = ((out - target).square() * mask[:, None]).sum() / mask.sum()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        if i >= int(warmup):
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        for p in params:
            p.grad = None
    fwd.sort()
    bwd.sort()
    return fwd[len(fwd) // 2], bwd[len(bwd) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96, help="grid edge (default 96)")
    parser.add_argument("--gaussians", type=int, default=512, help="K per volume (default 512)")
    parser.add_argument("--batch", type=int, default=None, help="volumes per call (default 1 on CPU, 8 on CUDA)")
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per fast backend (default 5)")
    parser.add_argument("--torch-repeats", type=int, default=1,
                        help="timed calls of the dense baseline (default 1)")
    parser.add_argument("--backends", default=None, help="comma list; default: every available one")
    parser.add_argument("--quick", action="store_true", help="48^3 grid, K=128: a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.gaussians = 48, 128

    device = torch.device(args.device)
    batch = args.batch or (8 if device.type == "cuda" else 1)
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = ["cupy"] if device.type == "cuda" and cupy_available() else []
        backends += ["cpu"] if device.type == "cpu" else []
        backends += ["torch"]
    setting = make_setting(batch, args.gaussians, args.size, args.mask_ratio, args.patch, device)
    rendered = int(setting[4].sum()) / batch
    threads = torch.get_num_threads()
    print(f"renderer benchmark: device={device} B={batch} K={args.gaussians} grid={args.size}^3 "
          f"rendered voxels/volume={rendered:.0f} ({rendered / args.size**3:.0%}) torch threads={threads}")

    results = {}
    for backend in backends:
        dense = backend == "torch"  # nothing to compile, and one call is long enough to time
        repeats = max(1, args.torch_repeats if dense else args.repeats)
        warmup = not dense or device.type == "cuda"
        fwd, bwd = time_backend(backend, setting, args.size, repeats, device, warmup=warmup)
        results[backend] = (fwd / batch, bwd / batch)
        print(f"  {backend}: measured", flush=True)

    base = results.get("torch")
    header = (f"{'backend':<8} {'forward s/vol':>14} {'backward s/vol':>15} {'total s/vol':>12} "
              f"{'total s/batch':>14} {'vs torch':>9}")
    print(header)
    print("-" * len(header))
    for backend, (fwd, bwd) in results.items():
        total = fwd + bwd
        ratio = f"{(base[0] + base[1]) / total:8.1f}x" if base else "      n/a"
        print(f"{backend:<8} {fwd:14.4f} {bwd:15.4f} {total:12.4f} {total * batch:14.4f} {ratio:>9}")


if __name__ == "__main__":
    main()
