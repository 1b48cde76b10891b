"""Has a pretraining run learned more than the crop's average? Masked MSE of checkpoints vs a trivial baseline.

    python -m benchmarks.pretrain_quality CKPT [CKPT ...] [-d Phantom] [--images PhantomUnlabeled]
                                          [--crops 16] [--seed 999]

For every checkpoint (latest or final; Gaussian, hierarchical or voxel decoder) it predicts the masked
voxels of the same crops under the same masks, and prints its masked MSE, that of the baseline (each
masked voxel at the mean of the crop's visible voxels: what a model that learned only intensity levels
gets), and the ratio. Below 1 means the model uses what it sees; docs/results.md gives the tiny preset's.

The crops come from the named datasets' preprocessed cases of the checkpoint's configuration, cut with another sampling seed than
pretraining's 41 and without augmentation. They are not held-out cases: the pretraining pool is all
of them. The masks are drawn from a fixed seed, so runs compare like for like.
"""
from __future__ import annotations

import argparse

import torch

from medgmae_plans.configurations import DEFAULT_CONFIGURATION
from medgmae_plans.runtime import UserError, cli_entry
from medgmae_trainers.pretrain.model import load_pretrain_model, visible_mean_mse
from preprocessing.pretrain_sampling import CropChunks, SamplingConfig

MASK_SEED = 0


def evaluation_crops(cases, crop_size: int, n: int, seed: int, per_case: int = 4) -> torch.Tensor:
    """n crops [n, 1, S, S, S], `per_case` per loaded case, from the sampling stream of `seed`."""
    chunks = CropChunks(cases, SamplingConfig(crop_size=crop_size, sub_crops=per_case, augment=False), seed=seed)
    return torch.cat([torch.from_numpy(chunks[i]) for i in range(-(-n // per_case))])[:n].float()


@torch.no_grad()
def masked_errors(model, crops: torch.Tensor, batch: int = 4) -> tuple[float, float]:
    """(model's masked MSE, visible-mean baseline's masked MSE), each averaged over the crops."""
    torch.manual_seed(MASK_SEED)
    ours, base = [], []
    for i in range(0, len(crops), batch):
        x = crops[i:i + batch]
        out = model(x)
        for b in range(len(x)):
            ours.append((((out["pred"][b] - x[b]) ** 2)[out["voxel_mask"][b][None]]).mean().item())
            base.append(visible_mean_mse(x[b:b + 1], out["voxel_mask"][b:b + 1]))
    return sum(ours) / len(ours), sum(base) / len(base)


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pretrain_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint_final.pt or checkpoint_latest.pt files")
    p.add_argument("-d", "--dataset", action="append", default=[], help="preprocessed labelled dataset (default Phantom)")
    p.add_argument("--images", action="append", default=[], help="preprocessed unlabelled collection")
    p.add_argument("--crops", type=int, default=16)
    p.add_argument("--seed", type=int, default=999, help="crop sampling seed (pretraining uses 41)")
    args = p.parse_args(argv)
    if args.crops < 1:
        raise UserError("--crops must be at least 1")
    from medgmae_plans.paths import ensure_nnunet_env
    from medgmae_trainers.pretrain.data import pretraining_cases

    ensure_nnunet_env()
    crops: dict[tuple[str, int], torch.Tensor] = {}  # by (configuration, crop size): the same crops for like runs
    print(f"{'checkpoint':<60} {'decoder':<12} {'step':>6} {'ours':>8} {'baseline':>8} {'ratio':>6}")
    for path in args.checkpoints:
        model, meta = load_pretrain_model(path)
        key = (meta.get("configuration", DEFAULT_CONFIGURATION), int(meta["crop_size"][0]))
        if key not in crops:
            cases, _ = pretraining_cases(args.dataset or ["Phantom"], args.images, key[0])
            crops[key] = evaluation_crops(cases, key[1], args.crops, args.seed)
        ours, base = masked_errors(model, crops[key])
        print(f"{str(path)[-60:]:<60} {meta['decoder_type']:<12} {meta.get('step', -1):>6} "
              f"{ours:8.4f} {base:8.4f} {ours / base:6.2f}")
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
