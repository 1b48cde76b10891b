"""Initialisers, density control, the fitting loop and the `medgmae_reconstruct` command on tiny volumes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medgmae_plans.constants import NORMALISATION
from medgmae_plans.runtime import UserError
from medgmae_trainers.networks import build_networks, network_config
from medgmae_trainers.pretrain import checkpoint as ckpt
from medgmae_trainers.pretrain.model import PretrainModel
from medgmae_trainers.reconstruction.cli import main as reconstruct
from medgmae_trainers.reconstruction.fbp import fbp_parallel
from medgmae_trainers.reconstruction.fit import FitSettings, fit
from medgmae_trainers.reconstruction.gaussian_field import DensifyConfig, GaussianField
from medgmae_trainers.reconstruction.initialisers import fbp_init, initialise, load_decoder, medgmae_init
from medgmae_trainers.reconstruction.projectors import ParallelBeamProjector

from test_reconstruct_projector import ellipsoids

CROP = 32  # a tiny network's window, so tests stay fast


def make_checkpoint(path, decoder_type: str = "gaussian", spacing: float = 1.5):
    """A randomly initialised tiny pretraining checkpoint in the real checkpoint_final.pt format."""
    cfg = network_config("tiny", patch_size=16, crop_size=CROP, num_gaussians=16)
    torch.manual_seed(0)
    encoder, decoder = build_networks(cfg, decoder_type)
    model = PretrainModel(encoder, decoder, decoder_type)
    ckpt.save_final(path, model=model, step=0, metadata={"preset": "tiny", "decoder_type": decoder_type,
                                                         "num_gaussians": 16, "network_config": cfg,
                                                         "spacing": [spacing] * 3, "normalisation": NORMALISATION})
    return path


@pytest.fixture(scope="module")
def scene():
    truth = torch.from_numpy(ellipsoids((16, 20, 20))).float()
    proj = ParallelBeamProjector(truth.shape, 24)
    measured = proj(truth)
    return truth, proj, measured, fbp_parallel(proj, measured)


def inside_with_positive_scales(g):
    assert ((g["means"] >= 0) & (g["means"] <= 1)).all()
    assert (g["scales"] > 0).all() and torch.isfinite(g["intensities"]).all()


def test_fbp_init_puts_gaussians_inside_the_volume_on_tissue(scene):
    truth, _, _, fbp = scene
    g = fbp_init(fbp, num_points=300, seed=1)
    assert g["means"].shape == (300, 3) and g["scales"].shape == (300, 3) and g["quats"].shape == (300, 4)
    inside_with_positive_scales(g)
    vox = (g["means"] * torch.tensor(truth.shape)).long()
    assert (fbp[vox[:, 0], vox[:, 1], vox[:, 2]] > 0.05).all()   # drawn above the air threshold


def test_medgmae_init_maps_window_gaussians_into_the_volume(tmp_path):
    path = make_checkpoint(tmp_path / "checkpoint_final.pt")
    encoder, decoder, _ = load_decoder(path, "medgmae")
    vol = torch.rand(CROP, CROP, CROP)
    with torch.no_grad():
        latent, _, _, ids_keep = encoder(vol[None, None], 0.0)
        direct = decoder(latent, ids_keep)
    one = medgmae_init(vol, encoder, decoder)        # one window exactly: coordinates unchanged
    keep = ((direct["means"][0] >= 0) & (direct["means"][0] <= 1)).all(-1)
    torch.testing.assert_close(one["means"], direct["means"][0][keep])
    torch.testing.assert_close(one["scales"], direct["scales"][0][keep])
    # a 40 x 48 x 20 volume: padded to 64 x 64 x 32, 4 windows; positions and scales rescaled per axis
    big = medgmae_init(torch.rand(40, 48, 20), encoder, decoder)
    inside_with_positive_scales(big)
    assert 0 < big["means"].shape[0] <= 4 * 16
    assert big["scales"][:, 2].mean() > big["scales"][:, 0].mean()  # x: 20 voxels, so larger normalised scales


def test_medgmae_star_needs_a_hierarchical_checkpoint(tmp_path, scene):
    gauss = make_checkpoint(tmp_path / "g.pt")
    hier = make_checkpoint(tmp_path / "h.pt", "hierarchical")
    with pytest.raises(UserError, match="hierarchical"):
        load_decoder(gauss, "medgmae-star")
    with pytest.raises(UserError, match="no such pretraining checkpoint"):
        load_decoder(tmp_path / "missing.pt", "medgmae")
    g, info = initialise("medgmae-star", scene[3], checkpoint=hier)
    inside_with_positive_scales(g)
    assert info["decoder_type"] == "hierarchical" and info["num_gaussians"] == g["means"].shape[0]


def test_clone_keeps_the_rendered_volume_and_adam_state_follows(scene):
    truth, _, _, fbp = scene
    g = fbp_init(fbp, num_points=50, seed=0)
    g["scales"] = g["scales"] * 0.3          # small: every candidate is cloned, not split
    field = GaussianField(g, truth.shape)
    field.render().sum().backward()
    field.step(1, 10)
    field.render().sum().backward()
    field.step(2, 10)
    before = field.render().detach()
    field.grad_accum[:10] = 10.0              # force the first ten over the threshold
    counts = field.densify_and_prune(DensifyConfig(grad_threshold=0.5, dense_scale=100.0, prune_intensity=0.0))
    assert counts["cloned"] == 10 and counts["split"] == 0 and field.num_gaussians == 60
    torch.testing.assert_close(field.render().detach(), before, atol=1e-5, rtol=1e-5)
    state = field.optimizer.state[field.params["means"]]
    assert state["exp_avg"].shape == (60, 3) and (state["exp_avg"][50:] == 0).all()
    field.render().sum().backward()
    field.step(3, 10)                         # the optimiser still runs on the new tensors


def test_fit_lowers_the_projection_loss(scene):
    truth, proj, measured, fbp = scene
    g = fbp_init(fbp, num_points=200, seed=0)
    s = FitSettings(iterations=30, eval_every=10, snapshots=(10,), densify=DensifyConfig(start=10, every=10))
    result = fit(g, proj, measured, truth, s, pbar=False)
    losses = [r["loss"] for r in result["records"][1:]]
    assert losses[-1] < 0.5 * losses[0]
    assert result["records"][-1]["psnr"] > result["records"][0]["psnr"]
    assert set(result["snapshots"]) == {0, 10}


def write_hu_phantom(path, shape=(20, 24, 24)):
    hu = ellipsoids(shape) * 425 - 175            # window units back to HU
    img = sitk.GetImageFromArray(hu.astype(np.float32))
    img.SetSpacing((1.5, 1.5, 1.5))
    sitk.WriteImage(img, str(path))
    return path


def test_short_run_writes_curves_slices_and_json(tmp_path):
    vol = write_hu_phantom(tmp_path / "ct.nii.gz")
    ckpt_path = make_checkpoint(tmp_path / "checkpoint_final.pt")
    out = tmp_path / "out"
    rc = reconstruct([str(vol), "--views", "16", "--compare", "--checkpoint", str(ckpt_path), "--iterations", "12",
                      "--eval-every", "6", "--snapshots", "6,12", "--num-points", "150", "--out", str(out), "--no-pbar"])
    assert rc == 0
    for f in ("reconstruct.json", "reconstruct.log", "curves.png", "table.md", "table.csv"):
        assert (out / f).is_file(), f
    for init in ("fbp", "medgmae"):
        for f in ("result.json", "curves.png", "slices.png", "gaussians.pt", "reconstruction.nii.gz"):
            assert (out / init / f).is_file(), (init, f)
        res = json.loads((out / init / "result.json").read_text())
        assert [r["iteration"] for r in res["records"]] == [0, 6, 12]
    payload = json.loads((out / "reconstruct.json").read_text())
    assert "data_range=1.0" in payload["settings"]["metrics"]["ssim"]
    assert [r["init"] for r in payload["results"]["runs"]] == ["fbp", "medgmae"]
    assert "iter(P=35)" in (out / "table.md").read_text()
    assert not list(out.glob(".*tmp*"))            # nothing left half-written


def test_a_3mm_checkpoint_sees_the_volume_at_3mm(tmp_path):
    """A 3d_lowres decoder gets each window zoomed from the volume's 1.5 mm to its own 3 mm."""
    vol = write_hu_phantom(tmp_path / "ct.nii.gz")
    ckpt_path = make_checkpoint(tmp_path / "checkpoint_final.pt", spacing=3.0)
    out = tmp_path / "out"
    assert reconstruct([str(vol), "--views", "8", "--init", "medgmae", "--checkpoint", str(ckpt_path),
                        "--iterations", "2", "--eval-every", "2", "--num-points", "50", "--out", str(out),
                        "--no-pbar"]) == 0
    assert json.loads((out / "medgmae" / "result.json").read_text())["init_info"]["window_zoom"] == 0.5


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert reconstruct([str(tmp_path / "missing.nii.gz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.nii.gz" in err[0] and "no such file" in err[0]
    (tmp_path / "bad.nii.gz").write_bytes(b"not an image")
    assert reconstruct([str(tmp_path / "bad.nii.gz"), "--out", str(out)]) == 2
    assert "bad.nii.gz" in capsys.readouterr().err
    vol = write_hu_phantom(tmp_path / "ct.nii.gz")
    voxel = make_checkpoint(tmp_path / "voxel.pt", "voxel")
    assert reconstruct([str(vol), "--init", "medgmae", "--checkpoint", str(voxel), "--iterations", "2",
                        "--out", str(out), "--no-pbar"]) == 2
    assert "voxel" in capsys.readouterr().err
    assert not (out / "medgmae").exists()
