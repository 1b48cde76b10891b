"""What the optimiser is given: parameter groups with one no-decay rule, and the learning-rate schedules
(multipliers for torch's own `LambdaLR`, whose state the checkpoints save)."""
from __future__ import annotations

import math

import torch

# MAE's rule: no weight decay on biases and norms (ndim <= 1) nor on the learned tokens and embeddings
# (the ViT's cls token and a learned position table, the Gaussian decoder's queries, the voxel decoder's
# mask token). The fixed sin-cos tables do not train at all.
NO_DECAY = ("cls_token", "pos_embed", "queries", "mask_token")


def no_decay(name: str, param: torch.Tensor) -> bool:
    """MAE's rule: no weight decay on biases, norms, tokens, position embeddings and queries."""
    return param.ndim <= 1 or name.endswith(NO_DECAY)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay_params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay_params if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay_params, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int):
    """Linear warmup from 0 to 1 over `warmup` steps, then cosine from 1 to 0 at `total`."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def polynomial_decay(total: int, power: float = 0.9):
    """TransMorph's schedule for registration: (1 - step / (total + 1)) ** power, held after `total`."""
    return lambda step: (1 - min(step, total) / (total + 1)) ** power
