"""Registration building blocks: warping, metrics against independent computations, DDF files, network, loss."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medgmae_plans.constants import NORMALISATION
from medgmae_plans.runtime import UserError
from medgmae_trainers.networks import ViT3D
from preprocessing.layouts.registration import ddf_to_itk, itk_to_ddf
from medgmae_trainers.registration.losses import RegistrationLoss
from medgmae_trainers.registration.metrics import (dice_per_label, endpoint_error, jacobian_determinant,
                                                   mean_dice, nonpositive_jacobian_percent)
from medgmae_trainers.registration.network import ViTMorph, build_model, vit_taps
from medgmae_trainers.registration.warping import random_smooth_ddf, warp_image, warp_labels


def blob(shape=(12, 14, 16), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)


def test_zero_field_is_identity():
    img = torch.from_numpy(blob())[None, None]
    lab = (img > img.mean()).long() * 3
    zero = torch.zeros(1, 3, *img.shape[2:])
    assert torch.allclose(warp_image(img, zero), img, atol=1e-6)
    assert torch.equal(warp_labels(lab, zero), lab)


def test_known_translation_is_recovered():
    img = blob()
    shift = (1, -2, 3)  # voxels along z, y, x
    ddf = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, *img.shape).contiguous()
    warped = warp_image(torch.from_numpy(img)[None, None], ddf)[0, 0].numpy()
    lab = warp_labels(torch.from_numpy((img > img.mean()).astype(np.int64))[None, None], ddf)[0, 0].numpy()
    # warped(x) = img(x + shift): compare where x + shift stays inside
    expected = img[1:, :, 3:][:, : img.shape[1] - 2]
    np.testing.assert_allclose(warped[:-1, 2:, :-3], expected, atol=1e-5)
    np.testing.assert_array_equal(lab[:-1, 2:, :-3], (expected > img.mean()).astype(np.int64))


def test_dice_matches_monai():
    from monai.metrics import compute_dice

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 4, (10, 11, 12)), rng.integers(0, 4, (10, 11, 12))
    ours = dice_per_label(a, b, [1, 2, 3])
    onehot = lambda x: torch.nn.functional.one_hot(torch.from_numpy(x), 4).permute(3, 0, 1, 2)[None].float()
    ref = compute_dice(onehot(a), onehot(b), include_background=False)[0].numpy()
    np.testing.assert_allclose([ours[1], ours[2], ours[3]], ref, rtol=1e-6)
    assert np.isnan(dice_per_label(a, b, [7])[7]) and mean_dice({1: 0.5, 2: float("nan"), 3: 1.0}) == 0.75


def test_jacobian_matches_simpleitk_and_closed_form():
    rng = np.random.default_rng(2)
    ddf = random_smooth_ddf((12, 14, 16), rng, max_disp=2.0)[0].numpy().astype(np.float64)
    field = sitk.GetImageFromArray(ddf[::-1].transpose(1, 2, 3, 0), isVector=True)  # (x, y, z) components
    ref = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    ours = jacobian_determinant(ddf)
    np.testing.assert_allclose(ours[1:-1, 1:-1, 1:-1], ref[1:-1, 1:-1, 1:-1], atol=1e-6)
    # an affine field u = A x has det(I + A) everywhere; a reflection (u_z = -2 z) folds every voxel
    a = np.array([[0.1, 0.2, 0.0], [0.0, -0.3, 0.1], [0.05, 0.0, 0.2]])
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in (6, 7, 8)], indexing="ij"))
    affine = np.einsum("ij,j...->i...", a, grid)
    np.testing.assert_allclose(jacobian_determinant(affine), np.linalg.det(np.eye(3) + a), rtol=1e-10)
    fold = np.zeros_like(grid)
    fold[0] = -2 * grid[0]
    assert nonpositive_jacobian_percent(fold) == 100.0 and nonpositive_jacobian_percent(affine) == 0.0


def test_endpoint_error_in_mm():
    true = np.zeros((3, 4, 5, 6))
    pred = true.copy()
    pred[0] += 1.0  # one voxel along z, 2.5 mm slices
    assert endpoint_error(pred, true, (2.5, 1.0, 1.0)) == pytest.approx(2.5)
    mask = np.zeros((4, 5, 6), bool)
    assert np.isnan(endpoint_error(pred, true, (1, 1, 1), mask))


def test_ddf_file_is_an_itk_displacement_field():
    """Our DDF written as an ITK field, applied by SimpleITK's resampler, warps like MONAI's Warp."""
    img = blob((10, 12, 14))
    ref = sitk.GetImageFromArray(img)
    ref.SetSpacing((0.8, 1.1, 2.0))
    ref.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    ref.SetOrigin((4.0, -3.0, 7.0))
    ddf = random_smooth_ddf(img.shape, np.random.default_rng(3), max_disp=1.5)[0].numpy()
    field = ddf_to_itk(ddf, ref)
    np.testing.assert_allclose(itk_to_ddf(sitk.GetArrayFromImage(field), field), ddf, atol=1e-5)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    itk_warped = sitk.GetArrayFromImage(sitk.Resample(ref, ref, tx, sitk.sitkLinear, 0.0))
    ours = warp_image(torch.from_numpy(img)[None, None], torch.from_numpy(ddf)[None])[0, 0].numpy()
    inside = (slice(2, -2),) * 3
    np.testing.assert_allclose(ours[inside], itk_warped[inside], atol=1e-4)


def _tiny_encoder_ckpt(tmp_path, patch=8):
    from medgmae_trainers.pretrain.checkpoint import FORMAT

    cfg = dict(img_size=16, patch_size=patch, in_chans=1, embed_dim=24, depth=2, num_heads=2, mlp_ratio=2.0,
               drop_path_rate=0.0)
    torch.manual_seed(0)
    enc = ViT3D(**cfg)
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"format": FORMAT, "metadata": {"encoder_config": cfg, "normalisation": NORMALISATION},
                "encoder": enc.state_dict()}, path)
    return path, enc


def test_an_encoder_pretrained_on_another_intensity_window_is_refused(tmp_path):
    """Registration and classification load through pretrain.pretrained.pretrained_vit, which checks it."""
    path, _ = _tiny_encoder_ckpt(tmp_path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["metadata"]["normalisation"] = {**NORMALISATION, "hu_window": [-1000.0, 1000.0]}
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"checkpoint_final.pt: pretrained with normalisation .*-1000"):
        build_model({"network": "vit", "shape_zyx": [16, 16, 24], "feature_size": 4}, path)


def test_pretrained_encoder_loads_every_key_and_starts_at_identity(tmp_path):
    path, enc = _tiny_encoder_ckpt(tmp_path)
    model, info = build_model({"network": "vit", "shape_zyx": [16, 16, 24], "feature_size": 4}, path)
    assert info["load_report"]["loaded_keys"] == len(enc.state_dict()) and info["token_grid"] == [2, 2, 3]
    for k, v in enc.state_dict().items():
        if k != "pos_embed":  # recomputed for the new token grid
            assert torch.equal(model.encoder.state_dict()[k], v), k
    m, f = torch.rand(2, 1, 16, 16, 24), torch.rand(2, 1, 16, 16, 24)
    warped, ddf = model(m, f)
    assert warped.shape == m.shape and ddf.shape == (2, 3, 16, 16, 24)
    assert ddf.abs().max() < 1e-2  # the flow head starts near zero: training starts from the identity
    broken = torch.load(path, weights_only=False)
    broken["encoder"].pop("norm.weight")
    torch.save(broken, path)
    with pytest.raises(UserError, match="missing"):
        build_model({"network": "vit", "shape_zyx": [16, 16, 24]}, path)


def test_network_refusals_and_taps(tmp_path):
    assert vit_taps(6, 2) == [2, 4] and vit_taps(12, 2) == [4, 8] and vit_taps(12, 1) == [6]
    with pytest.raises(UserError, match="power of two"):
        ViTMorph(ViT3D(img_size=24, patch_size=12, embed_dim=24, depth=2, num_heads=2))
    with pytest.raises(UserError, match="multiple"):
        build_model({"network": "vit", "shape_zyx": [20, 32, 32], "preset": "tiny"})
    with pytest.raises(UserError, match="divisible by 16"):
        build_model({"network": "voxelmorph", "shape_zyx": [24, 32, 32]})


def test_diffeomorphic_and_voxelmorph_shapes():
    m, f = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    vxm, _ = build_model({"network": "voxelmorph", "shape_zyx": [16, 16, 16], "diffeomorphic": True})
    warped, ddf = vxm(m, f)
    assert warped.shape == m.shape and ddf.shape == (1, 3, 16, 16, 16)
    torch.manual_seed(0)
    enc = ViT3D(img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2)
    net = ViTMorph(enc, feature_size=4, diffeomorphic=True)
    assert net(m, f)[1].shape == (1, 3, 16, 16, 16)


def test_loss_parts():
    loss = RegistrationLoss(num_labels=2, ncc_kernel=3)
    img = torch.from_numpy(blob((10, 10, 10)))[None, None]
    seg = (img > img.mean()).long() + (img > img.quantile(0.9)).long()
    same = loss(img, img, torch.zeros(1, 3, 10, 10, 10), seg, seg)
    assert same["ncc"] == pytest.approx(-1.0, abs=1e-3) and same["diffusion"] == 0 and same["dice"] < 1e-3
    other = loss(img, torch.roll(img, 3, 2), torch.rand(1, 3, 10, 10, 10), seg, torch.roll(seg, 3, 2))
    assert other["loss"] > same["loss"] and set(other) == {"loss", "ncc", "diffusion", "dice"}
    assert "dice" not in loss(img, img, torch.zeros(1, 3, 10, 10, 10))
