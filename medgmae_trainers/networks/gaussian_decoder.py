"""MedGMAE's Gaussian decoder (paper section 3.2, eq. 3, appendix 7.3-7.4) and MedGMAE*'s hierarchy (eq. 4).

Decoder input: [cls] + K learnable Gaussian queries + the visible tokens (projected to the decoder
width, with the decoder's position embeddings of their patches added, so the queries know where
each visible token lies). After the transformer, the K query outputs go through four linear heads,
one Gaussian per query, so K is independent of the mask ratio.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vit import Block, init_transformer_weights, sincos_pos_embed_3d

# Head biases from the paper (table 8): sigmoid(-1.386) = 0.200, so scales start at 0.2 * max scale;
# sigmoid(-0.405) = 0.400 (the paper's text rounds it to 0.5; the bias is what we keep).
# Position and rotation biases are 0: Gaussians start around the centre, rotations random.
SCALE_BIAS = -1.386
INTENSITY_BIAS = -0.405


class GaussianHeads(nn.Module):
    """Decoder features [B, K, C] -> one 3D Gaussian per feature.

    Returns a dict
        means       [B, K, 3]  sigmoid, normalised (z, y, x) in [0, 1]
        scales      [B, K, 3]  sigmoid * max_scale, standard deviations in normalised units
        quats       [B, K, 4]  L2-normalised (w, x, y, z)
        intensities [B, K]     sigmoid
    """

    def __init__(self, dim: int, max_scale: float = 0.5):
        super().__init__()
        self.max_scale = max_scale
        self.position = nn.Linear(dim, 3)
        self.scale = nn.Linear(dim, 3)
        self.rotation = nn.Linear(dim, 4)
        self.intensity = nn.Linear(dim, 1)
        for head, bias in ((self.position, 0.0), (self.scale, SCALE_BIAS),
                           (self.rotation, 0.0), (self.intensity, INTENSITY_BIAS)):
            nn.init.xavier_uniform_(head.weight)
            nn.init.constant_(head.bias, bias)

    def raw(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads' unconstrained outputs: position, scale [B, K, 3], rotation [B, K, 4], intensity [B, K, 1]."""
        return {"position": self.position(h), "scale": self.scale(h), "rotation": self.rotation(h),
                "intensity": self.intensity(h)}

    def activate(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`raw`'s outputs -> the Gaussians (the class docstring's dict). Split from `forward` so that a
        direct fit of the Gaussians (benchmarks.pretrain_quality) optimises the same parametrisation."""
        return {
            "means": torch.sigmoid(raw["position"]),
            "scales": torch.sigmoid(raw["scale"]) * self.max_scale,
            "quats": F.normalize(raw["rotation"], dim=-1, eps=1e-6),
            "intensities": torch.sigmoid(raw["intensity"]).squeeze(-1),
        }

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.activate(self.raw(h))


class GaussianDecoder(nn.Module):
    """Light transformer over [cls] + K queries + visible tokens, then `GaussianHeads` on the queries.

    Args:
        grid: the encoder's patch grid (gd, gh, gw), for the decoder position embeddings.
        encoder_dim: width of the encoder tokens; dim, depth, num_heads, mlp_ratio: the decoder's.
        num_gaussians: K, the number of query tokens (= Gaussians).
    """

    def __init__(self, grid: Sequence[int], encoder_dim: int, dim: int = 528, depth: int = 8,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_gaussians: int = 512,
                 max_scale: float = 0.5, drop_path_rate: float = 0.0):
        super().__init__()
        self.grid = tuple(grid)
        self.num_gaussians = num_gaussians
        self.decoder_embed = nn.Linear(encoder_dim, dim)
        self.queries = nn.Parameter(torch.zeros(1, num_gaussians, dim))
        self.decoder_pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed_3d(dim, self.grid))[None],
                                              requires_grad=False)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.decoder_blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, r) for r in rates])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        init_transformer_weights(self)
        # Unit-variance queries (as nn.Embedding, DETR): with MAE's 0.02 every query attends alike,
        # all K Gaussians start on one spot, their sum saturates there and the intensities collapse.
        nn.init.normal_(self.queries, std=1.0)
        self.heads = GaussianHeads(dim, max_scale)  # built last: its own init must not be overwritten

    def query_features(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """latent [B, 1 + n, C_enc] (cls first), ids_keep [B, n] -> query outputs [B, K, dim]."""
        x = self.decoder_embed(latent)
        B, _, C = x.shape
        pos = self.decoder_pos_embed.expand(B, -1, -1)
        cls = x[:, :1] + pos[:, :1]
        visible = x[:, 1:] + torch.gather(pos[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, C))
        x = torch.cat([cls, self.queries.expand(B, -1, -1), visible], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x)[:, 1:1 + self.num_gaussians]

    def raw_gaussians(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unconstrained parameters the Gaussians are made from (`GaussianHeads.raw`)."""
        return self.heads.raw(self.query_features(latent, ids_keep))

    def gaussians_from_raw(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns the Gaussians (see `GaussianHeads`) plus `level` [K] (all 0 here)."""
        out = self.heads.activate(raw)
        out["level"] = torch.zeros(self.num_gaussians, dtype=torch.long, device=out["means"].device)
        return out

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns the Gaussians (see `GaussianHeads`) plus `level` [K] (all 0 here)."""
        return self.gaussians_from_raw(self.raw_gaussians(latent, ids_keep))


class ResidualLevel(nn.Module):
    """One MedGMAE* level: every base Gaussian spawns `multiplicity` children by tanh residuals (eq. 4).

        s^l = s^0 + tanh(.) * sigma_scale - delta_s      (clamped at min_scale to stay a valid Gaussian)
        mu^l = mu^0 + tanh(.) * sigma_mu,   I^l = I^0 + tanh(.) * sigma_I,
        phi^l = normalize(phi^0 + tanh(.) * sigma_rot)
    Children are laid out base-major: child c of base Gaussian k is at index k * multiplicity + c.
    """

    def __init__(self, dim: int, multiplicity: int, delta_scale: float, sigma_scale: float = 0.1,
                 sigma_mu: float = 0.05, sigma_intensity: float = 0.1, sigma_rot: float = 0.2,
                 min_scale: float = 1e-3):
        super().__init__()
        self.multiplicity = multiplicity
        self.delta_scale = delta_scale
        self.sigmas = dict(scale=sigma_scale, mu=sigma_mu, intensity=sigma_intensity, rot=sigma_rot)
        self.min_scale = min_scale
        self.expand = nn.Linear(dim, multiplicity * dim)  # one feature per child
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.residual = nn.Linear(dim, 3 + 3 + 4 + 1)
        init_transformer_weights(self)

    def raw(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, K, C] -> the children's residuals before tanh [B, K, multiplicity, 11]."""
        B, K, C = h.shape
        return self.residual(self.norm(self.expand(h).reshape(B, K, self.multiplicity, C)))

    def forward(self, h: torch.Tensor, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """h [B, K, C], base Gaussians with K entries -> children with K * multiplicity entries."""
        return self.spawn(self.raw(h), base)

    def spawn(self, raw: torch.Tensor, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """raw [B, K, m, 11] (`raw`), base Gaussians with K entries -> children with K * m entries."""
        B, K, m, _ = raw.shape
        r = torch.tanh(raw)
        rep = lambda t: t.unsqueeze(2).expand(B, K, m, *t.shape[2:])  # noqa: E731 - broadcast parent to children
        s = self.sigmas
        means = rep(base["means"]) + r[..., 0:3] * s["mu"]
        scales = (rep(base["scales"]) + r[..., 3:6] * s["scale"] - self.delta_scale).clamp_min(self.min_scale)
        quats = F.normalize(rep(base["quats"]) + r[..., 6:10] * s["rot"], dim=-1, eps=1e-6)
        intensities = rep(base["intensities"]) + r[..., 10] * s["intensity"]
        flat = lambda t: t.reshape(B, K * m, *t.shape[3:])  # noqa: E731
        return {"means": flat(means), "scales": flat(scales), "quats": flat(quats),
                "intensities": flat(intensities)}


class HierarchicalGaussianDecoder(GaussianDecoder):
    """MedGMAE*: level 0 = the K base Gaussians of `GaussianDecoder`; levels 1..L add residual children.

    `multiplicities[l-1]` children per base Gaussian at level l (level l holds m_l * K Gaussians),
    `delta_scales[l-1]` the scale reduction Δs^l (0.02, 0.05 in the paper). All levels are rendered
    together; `level` [K_total] says which level each Gaussian belongs to.
    """

    def __init__(self, *args, multiplicities: Sequence[int] = (2, 4), delta_scales: Sequence[float] = (0.02, 0.05),
                 **kwargs):
        super().__init__(*args, **kwargs)
        if len(multiplicities) != len(delta_scales):
            raise ValueError("one multiplicity per delta scale")
        dim = self.decoder_embed.out_features
        self.levels = nn.ModuleList([ResidualLevel(dim, m, ds) for m, ds in zip(multiplicities, delta_scales)])

    def raw_gaussians(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """The base heads' raw outputs plus `level1`, `level2`, ...: each level's pre-tanh residuals [B, K, m, 11]."""
        h = self.query_features(latent, ids_keep)
        raw = self.heads.raw(h)
        raw.update({f"level{i + 1}": level.raw(h) for i, level in enumerate(self.levels)})
        return raw

    def gaussians_from_raw(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All levels' Gaussians, concatenated, plus `level` [K_total]."""
        base = self.heads.activate(raw)
        outs = [base] + [level.spawn(raw[f"level{i + 1}"], base) for i, level in enumerate(self.levels)]
        result = {key: torch.cat([o[key] for o in outs], dim=1) for key in base}
        device = base["means"].device
        result["level"] = torch.cat([torch.full((o["means"].shape[1],), i, dtype=torch.long, device=device)
                                     for i, o in enumerate(outs)])
        return result

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.gaussians_from_raw(self.raw_gaussians(latent, ids_keep))
