"""Optimiser and schedule for fine-tuning UNETR: AdamW, optional layer-wise lr decay, warmup then cosine.

Why not nnU-Net's SGD (lr 1e-2, momentum 0.99, poly decay): it is tuned for convolutional U-Nets
trained from scratch; ViTs train poorly with SGD and a pretrained ViT is easily destroyed by large
early updates. Following the paper (AdamW, weight decay 0.05) and UNETR's AdamW:

- AdamW, betas (0.9, 0.999), peak lr `lr` (3e-4);
- **one optimiser for every init**: scratch, voxel-MAE and MedGMAE encoders get the same groups, so a
  comparison of inits compares start weights and nothing else. The defaults (run_record.Settings)
  are the paper's: weight decay 0.05 everywhere and no layer decay;
- layer-wise lr decay is a stated choice (`--layer-decay`, BEiT/MAE fine-tuning practice), applied to
  the encoder whatever its init: block i (1-based) gets `lr * decay^(depth + 1 - i)`, the patch
  embedding, cls token and position embedding `lr * decay^(depth + 1)`, the final encoder norm `lr`;
  likewise the encoder's weight decay (`weight_decay_encoder`) may differ from the decoder's;
- no weight decay on biases, norms, the cls token and position embeddings (MAE's rule);
- schedule per iteration: linear warmup over `warmup_fraction` (5%) of all iterations, then cosine
  to zero. A per-epoch schedule (nnU-Net's) would make warmup meaningless in short runs.
"""
from __future__ import annotations

import torch

from ..run import lr_lambda, no_decay


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    network = getattr(network, "module", network)       # DDP
    return getattr(network, "_orig_mod", network)       # torch.compile


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i for encoder block i-1 (0-based name), depth + 1 for everything else."""
    if name.startswith("encoder."):
        rest = name[len("encoder."):]
        if rest.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def param_groups(network: torch.nn.Module, *, layer_decay: float, wd_encoder: float, wd_decoder: float) -> list[dict]:
    """AdamW groups, the same rule for every init; each carries `lr_scale` (relative to the peak lr).
    The decoder's group comes first."""
    net = _unwrap(network)
    depth = len(net.encoder.blocks)
    groups: dict[tuple, dict] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("encoder.")
        lid = layer_id(name, depth)
        scale = layer_decay ** (depth + 1 - lid)
        wd = 0.0 if no_decay(name, param) else (wd_encoder if is_encoder else wd_decoder)
        key = (not is_encoder, lid, wd)
        group = groups.setdefault(key, {"params": [], "names": [], "lr_scale": scale, "weight_decay": wd,
                                        "part": "encoder" if is_encoder else "decoder", "layer": lid})
        group["params"].append(param)
        group["names"].append(name)
    # decoder first: nnU-Net logs param_groups[0]['lr'] as "the" learning rate
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], -k[1], k[2]))]


class WarmupCosine:
    """Per-iteration lr: linear warmup to `peak`, cosine to 0; each group gets `peak * lr_scale`.

    nnU-Net calls `step(epoch)` at each epoch start; the trainer calls `set_iteration(i)` every step.
    The state is a function of the iteration, so `--continue` needs no scheduler state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak: float, total_iterations: int,
                 warmup_iterations: int, iterations_per_epoch: int):
        self.optimizer = optimizer
        self.peak = peak
        self.total = max(1, int(total_iterations))
        self.warmup = max(0, min(int(warmup_iterations), self.total - 1))
        self.per_epoch = max(1, int(iterations_per_epoch))
        self._shape = lr_lambda(self.warmup, self.total)  # the run core's warmup-cosine, as pretraining's
        self.set_iteration(0)

    def lr_at(self, iteration: int) -> float:
        return self.peak * self._shape(iteration)

    def set_iteration(self, iteration: int) -> None:
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self, epoch: int | None = None) -> None:
        self.set_iteration((epoch or 0) * self.per_epoch)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
