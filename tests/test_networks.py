"""Networks: encoder masking and token order, head initialisation, decoders' shapes, hierarchy (eq. 4)."""
from __future__ import annotations

import math

import pytest
import torch

from medgmae_trainers.networks import (GaussianHeads, HierarchicalGaussianDecoder, ViT3D, build_networks,
                                       network_config, num_visible, patchify, random_masking,
                                       token_mask_to_voxels, unpatchify)

torch.set_num_threads(1)


def tiny(decoder="gaussian", crop=32, patch=8, k=16):
    torch.manual_seed(0)
    return build_networks(network_config("tiny", crop_size=crop, patch_size=patch, num_gaussians=k), decoder)


def test_head_initialisation_gives_the_papers_starting_values():
    heads = GaussianHeads(dim=96, max_scale=0.5)
    assert torch.all(heads.position.bias == 0) and torch.all(heads.rotation.bias == 0)
    assert torch.allclose(heads.scale.bias, torch.full((3,), -1.386))
    assert torch.allclose(heads.intensity.bias, torch.full((1,), -0.405))
    for head in (heads.position, heads.scale, heads.rotation, heads.intensity):
        fan_out, fan_in = head.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier uniform
        assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.5 * bound
    # Zero features isolate the biases: centre of the crop, scale 0.2 * max scale, intensity sigmoid(-0.405).
    g = heads(torch.zeros(2, 5, 96))
    assert torch.allclose(g["means"], torch.full_like(g["means"], 0.5))
    assert torch.allclose(g["scales"], torch.full_like(g["scales"], 0.1), atol=1e-4)
    assert torch.allclose(g["intensities"], torch.full_like(g["intensities"], 0.4), atol=1e-3)
    # Random features: unit quaternions, everything in range.
    g = heads(torch.randn(2, 5, 96))
    assert torch.allclose(g["quats"].norm(dim=-1), torch.ones(2, 5), atol=1e-5)
    assert (g["scales"] > 0).all() and (g["scales"] < 0.5).all()
    assert (g["means"] >= 0).all() and (g["means"] <= 1).all()


@pytest.mark.parametrize("n_tokens,ratio", [(216, 0.75), (512, 0.75), (64, 0.5), (27, 0.6)])
def test_masking_keeps_exactly_n_tokens_per_sample(n_tokens, ratio):
    torch.manual_seed(1)
    x = torch.randn(4, n_tokens, 6)
    visible, mask, ids_restore, ids_keep = random_masking(x, ratio)
    n = int(n_tokens * (1 - ratio))
    assert n == num_visible(n_tokens, ratio)
    assert visible.shape == (4, n, 6) and ids_keep.shape == (4, n)
    assert torch.all(mask.sum(1) == n_tokens - n)
    for b in range(4):
        assert len(set(ids_keep[b].tolist())) == n
        assert torch.all(mask[b, ids_keep[b]] == 0)
        assert torch.equal(visible[b], x[b, ids_keep[b]])
    # Masks differ between samples of one batch (the noise is per sample).
    assert not torch.equal(mask[0], mask[1])
    # ids_restore unshuffles [visible, masked] to the original order.
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    shuffled = torch.gather(x, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, 6))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 6)), x)


def test_voxel_mask_and_patchify_follow_the_token_order():
    grid, p = (2, 3, 4), 4
    mask = torch.zeros(1, 24)
    mask[0, 1 * 12 + 2 * 4 + 3] = 1  # token (z=1, y=2, x=3) in raster order
    vox = token_mask_to_voxels(mask, grid, p)
    assert vox.shape == (1, 8, 12, 16) and vox.sum() == p ** 3
    assert vox[0, 4:8, 8:12, 12:16].all()
    imgs = torch.rand(2, 1, 8, 12, 16)
    tokens = patchify(imgs, p)
    assert tokens.shape == (2, 24, p ** 3)
    assert torch.equal(tokens[0, 23], imgs[0, 0, 4:8, 8:12, 12:16].reshape(-1))
    assert torch.equal(unpatchify(tokens, grid, p), imgs)


def test_encoder_sees_only_visible_tokens():
    encoder, _ = tiny()
    encoder.eval()
    imgs = torch.rand(2, 1, 32, 32, 32)
    torch.manual_seed(5)
    latent, mask, _, _ = encoder(imgs, 0.75)
    vox = token_mask_to_voxels(mask, encoder.grid, 8).unsqueeze(1)
    changed = torch.where(vox, torch.rand_like(imgs), imgs)  # new content under the masked patches only
    torch.manual_seed(5)
    latent2, mask2, _, _ = encoder(changed, 0.75)
    assert torch.equal(mask, mask2)
    assert torch.allclose(latent, latent2, atol=1e-6)
    assert latent.shape == (2, 1 + 16, encoder.embed_dim)


def test_encoder_keys_and_hidden_states_for_unetr():
    encoder, _ = tiny()
    prefixes = {k.split(".")[0] for k in encoder.state_dict()}
    assert prefixes == {"patch_embed", "cls_token", "pos_embed", "blocks", "norm"}
    assert encoder.pos_embed.shape == (1, 1 + 64, encoder.embed_dim) and not encoder.pos_embed.requires_grad
    encoder.eval()
    imgs = torch.rand(1, 1, 32, 32, 32)
    final, hidden = encoder.forward_hidden(imgs, layers=[2, 6])
    assert final.shape == (1, 64, encoder.embed_dim) and [h.shape for h in hidden] == [final.shape] * 2
    latent, mask, _, ids_keep = encoder(imgs, 0.0)  # no masking: identity order, same computation
    assert mask.sum() == 0 and torch.equal(ids_keep[0], torch.arange(64))
    assert torch.allclose(latent[:, 1:], final, atol=1e-5)
    # A fresh encoder loads the state dict strictly (what UNETR's loader relies on).
    ViT3D(**encoder.config).load_state_dict(encoder.state_dict(), strict=True)


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_gaussian_count_is_independent_of_the_mask_ratio(ratio):
    encoder, decoder = tiny(k=16)
    latent, _, _, ids_keep = encoder(torch.rand(2, 1, 32, 32, 32), ratio)
    g = decoder(latent, ids_keep)
    assert g["means"].shape == (2, 16, 3) and g["scales"].shape == (2, 16, 3)
    assert g["quats"].shape == (2, 16, 4) and g["intensities"].shape == (2, 16)


def test_hierarchical_levels_follow_eq4():
    encoder, decoder = tiny("hierarchical", k=8)
    assert isinstance(decoder, HierarchicalGaussianDecoder)
    latent, _, _, ids_keep = encoder(torch.rand(2, 1, 32, 32, 32), 0.75)
    g = decoder(latent, ids_keep)
    assert g["means"].shape == (2, 8 * (1 + 2 + 4), 3)
    assert g["level"].tolist() == [0] * 8 + [1] * 16 + [2] * 32
    base_s = g["scales"][:, :8]
    for level, (m, ds) in enumerate([(2, 0.006), (4, 0.015)], start=1):  # tiny's steps
        s = g["scales"][:, g["level"] == level].reshape(2, 8, m, 3)
        assert (s <= base_s.unsqueeze(2) + 0.1 - ds + 1e-6).all()  # s^l <= s^0 + sigma_scale - delta_s
        assert (s >= base_s.unsqueeze(2) - 0.1 - ds - 1e-6).all() and (s > 0).all()
    # With zero residuals, children sit on their parent with the scale reduced by exactly delta_s.
    for level in decoder.levels:
        torch.nn.init.zeros_(level.residual.weight)
    g = decoder(latent, ids_keep)
    child = g["scales"][:, g["level"] == 2].reshape(2, 8, 4, 3)
    assert torch.allclose(child, (g["scales"][:, :8].unsqueeze(2) - 0.015).clamp_min(1e-3).expand_as(child))
    assert torch.allclose(g["means"][:, g["level"] == 1].reshape(2, 8, 2, 3),
                          g["means"][:, :8].unsqueeze(2).expand(2, 8, 2, 3))


def test_voxel_decoder_predicts_every_token():
    encoder, decoder = tiny("voxel")
    latent, _, ids_restore, _ = encoder(torch.rand(2, 1, 32, 32, 32), 0.75)
    assert decoder(latent, ids_restore).shape == (2, 64, 8 ** 3)


def test_presets_build_the_stated_sizes():
    cfg = network_config("paper")
    assert cfg["encoder"]["embed_dim"] == 1536 and cfg["encoder"]["depth"] == 12
    assert cfg["decoder"] == dict(dim=528, depth=8, num_heads=16, mlp_ratio=4.0, drop_path_rate=0.1)
    assert cfg["gaussians"]["num_gaussians"] == 512 and cfg["gaussians"]["max_scale"] == 0.5
    assert cfg["gaussians"]["delta_scales"] == [0.02, 0.05] and cfg["gaussians"]["render_cutoff"] == 2.0
    base = network_config("base", patch_size=12)
    assert (base["encoder"]["embed_dim"], base["encoder"]["depth"], base["encoder"]["num_heads"]) == (768, 12, 12)
    encoder = ViT3D(**base["encoder"])
    assert encoder.num_patches == 512
    with pytest.raises(ValueError):
        ViT3D(img_size=96, patch_size=20, embed_dim=96, depth=1, num_heads=2)


def test_networks_import_with_torch_alone():
    import subprocess
    import sys

    code = ("import sys, medgmae_trainers.networks; "
            "bad = [m for m in ('nnunetv2', 'monai', 'SimpleITK', 'batchgenerators') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_encoder_state_loader_regrids_learned_pos_embed_and_refuses_foreign_keys():
    from medgmae_trainers.networks import EncoderStateMismatch, load_encoder_state

    torch.manual_seed(0)
    src = ViT3D(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2)  # grid 2x2x2
    state = src.state_dict()
    state["pos_embed"] = torch.randn(1, 1 + 8, 24)  # a learned table: interpolated, not recomputed
    dst = ViT3D(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)  # grid 4x4x4
    report = load_encoder_state(dst, state, skipped=["decoder.x"])
    assert report["pos_embed_interpolated"] == {"from": [2, 2, 2], "to": [4, 4, 4]}
    assert report["loaded_keys"] == len(state) and report["skipped"] == ["decoder.x"]
    assert torch.equal(dst.pos_embed[:, 0], state["pos_embed"][:, 0])  # cls row kept
    assert torch.equal(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    with pytest.raises(EncoderStateMismatch, match="unexpected"):
        load_encoder_state(dst, {**src.state_dict(), "head.weight": torch.zeros(1)})


@pytest.mark.parametrize("decoder", ["gaussian", "hierarchical", "voxel"])
def test_lowres_geometry_patch8_through_every_decoder_and_into_unetr(decoder):
    """3d_lowres: 48^3 crops at patch 8 (a 6^3 grid); the encoder loads one-to-one into UNETR, and
    into a 64^3 fine-tuning patch with its sin-cos table recomputed on the 8^3 grid."""
    from medgmae_trainers.networks import load_encoder_state
    from medgmae_trainers.unetr import build_unetr

    encoder, dec = tiny(decoder, crop=48, patch=8, k=16)
    assert encoder.grid == (6, 6, 6)
    latent, _, ids_restore, ids_keep = encoder(torch.rand(1, 1, 48, 48, 48), 0.75)
    if decoder == "voxel":
        assert dec(latent, ids_restore).shape == (1, 216, 8 ** 3)
    else:
        out = dec(latent, ids_keep)
        assert out["means"].shape[0] == 1 and out["means"].shape[-1] == 3 and out["means"].shape[1] >= 16
    cfg = encoder.config
    kwargs = dict(hidden_size=cfg["embed_dim"], mlp_dim=cfg["embed_dim"] * 4, num_layers=cfg["depth"],
                  num_heads=cfg["num_heads"], feature_size=4)
    same = build_unetr(1, 3, img_size=48, patch_size=8, **kwargs)
    report = load_encoder_state(same.encoder, encoder.state_dict())
    assert report["loaded_keys"] == len(encoder.state_dict()) and not report["pos_embed_interpolated"]
    assert torch.equal(same.encoder.patch_embed.proj.weight, encoder.patch_embed.proj.weight)
    bigger = build_unetr(1, 3, img_size=64, patch_size=8, **kwargs)
    report = load_encoder_state(bigger.encoder, encoder.state_dict(), source_grid=[6, 6, 6])
    assert report["pos_embed_interpolated"] == {"from": [6, 6, 6], "to": [8, 8, 8]}
    assert bigger(torch.rand(1, 1, 64, 64, 64)).shape == (1, 3, 64, 64, 64)
