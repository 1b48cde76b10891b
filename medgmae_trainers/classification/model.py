"""The classifier: the pretrained (or scratch) ViT3D encoder and a linear head on mean-pooled patch tokens.

Pooling: the mean of the patch tokens after the encoder's final norm, then a LayerNorm and a linear
layer (MAE's `global_pool` fine-tuning head). Mean pooling is used rather than the class token
because the whole volume's tokens, not one summary token, carry findings that may sit anywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..networks import ViT3D, network_config
from ..pretrain.pretrained import fit_token_grid, pretrained_vit


class Classifier(nn.Module):
    def __init__(self, encoder: ViT3D, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, D, H, W] -> logits [B, K]."""
        tokens, _ = self.encoder.forward_hidden(x, layers=[])  # [B, N, C]
        return self.head(self.fc_norm(tokens.mean(dim=1)))


def build_classifier(*, num_classes: int, size_zyx: Sequence[int], pretrained: Path | None = None,
                     preset: str = "tiny", patch: int | None = None) -> tuple[Classifier, dict]:
    """A classifier for volumes of `size_zyx`: pretrained encoder from `pretrained`, else a scratch `preset`."""
    if pretrained is not None:
        encoder, meta = pretrained_vit(pretrained)
        info = {"init": "pretrained", "checkpoint": str(pretrained), "pretrain_metadata": meta}
    else:
        cfg = network_config(preset, patch_size=patch)["encoder"]
        encoder = ViT3D(**cfg)
        info = {"init": "scratch", "preset": preset}
    grid = fit_token_grid(encoder, size_zyx)
    info.update(encoder_config=encoder.config, token_grid=grid)
    return Classifier(encoder, num_classes), info
