"""UNETR around ViT3D: output shapes for patch 16, 12 and 8, skip taps, the nnU-Net builder's contract."""
from __future__ import annotations

import pytest
import torch

from medgmae_trainers.networks import ViT3D
from medgmae_trainers.unetr import UNETR, build_unetr, skip_layers

torch.set_num_threads(1)

SMALL = dict(hidden_size=48, mlp_dim=192, num_layers=3, num_heads=3, feature_size=4)


@pytest.mark.parametrize("patch,img", [(16, 32), (12, 24), (12, 36), (8, 16), (8, 48)])
def test_output_is_full_resolution_logits(patch, img):
    torch.manual_seed(0)
    net = build_unetr(1, 5, img_size=[img] * 3, patch_size=patch, **SMALL)
    x = torch.randn(2, 1, img, img, img)
    y = net(x)
    assert y.shape == (2, 5, img, img, img)
    y.sum().backward()  # every parameter takes part (DDP would complain about unused ones)
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_patch12_and_patch16_upsampling_paths():
    p16 = build_unetr(1, 2, img_size=[48] * 3, patch_size=16, **SMALL)
    p12 = build_unetr(1, 2, img_size=[48] * 3, patch_size=12, **SMALL)
    assert p16.grid == (3, 3, 3) and p12.grid == (4, 4, 4)
    assert p16.encoder2 is not None and p16.decoder3 is not None
    # 12 = 2 * 2 * 3: no 8g level; the last up-step is a stride-3 transposed convolution
    assert p12.encoder2 is None and p12.decoder3 is None
    assert p12.decoder2.transp_conv.conv.stride == (3, 3, 3)
    assert p16.decoder2.transp_conv.conv.stride == (2, 2, 2)


def test_patch8_is_three_stride2_steps_at_3d_lowres_geometry():
    """3d_lowres: 48^3 at patch 8 keeps the 6^3 token grid of 96^3 at patch 16."""
    p8 = build_unetr(1, 2, img_size=[48] * 3, patch_size=8, **SMALL)
    assert p8.grid == (6, 6, 6)
    assert p8.encoder2 is None and p8.decoder3 is None
    assert p8.decoder2.transp_conv.conv.stride == (2, 2, 2)


def test_skip_taps_follow_unetr():
    assert skip_layers(12) == (3, 6, 9)  # UNETR's z3, z6, z9
    assert skip_layers(6) == (2, 3, 5)
    with pytest.raises(ValueError):
        skip_layers(2)


def test_encoder_keys_are_vit3d_keys_under_prefix():
    net = build_unetr(1, 2, img_size=[32] * 3, patch_size=16, **SMALL)
    vit = ViT3D(img_size=32, patch_size=16, embed_dim=48, depth=3, num_heads=3)
    enc_keys = {k[len("encoder."):] for k in net.state_dict() if k.startswith("encoder.")}
    assert enc_keys == set(vit.state_dict())


def test_encoder_output_drives_the_network():
    """The decoder really uses the ViT: changing one encoder block changes the logits."""
    torch.manual_seed(0)
    net = UNETR(1, 2, img_size=32, patch_size=16, hidden_size=48, num_layers=3, num_heads=3, feature_size=4).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.encoder.blocks[2].mlp.fc2.weight.add_(0.5)
        after = net(x)
    assert not torch.allclose(before, after)


def test_builder_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="deep supervision"):
        build_unetr(1, 2, img_size=[32] * 3, patch_size=16, deep_supervision=True, **SMALL)
    with pytest.raises(ValueError, match="dropout"):
        build_unetr(1, 2, img_size=[32] * 3, patch_size=16, dropout_rate=0.1, **SMALL)
    with pytest.raises(ValueError, match="cubic"):
        build_unetr(1, 2, img_size=[32, 32, 48], patch_size=16, **SMALL)
    with pytest.raises(ValueError, match="patch size"):
        build_unetr(1, 2, img_size=[32] * 3, patch_size=4, **SMALL)
