"""benchmarks.pretrain_quality's direct-fit ceiling, its flags and its table (tiny models, 16^3 crops)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.pretrain_quality import crop_average, direct_fit, main, masked_errors
from medgmae_trainers.networks import build_networks, network_config
from medgmae_trainers.pretrain.checkpoint import save_final
from medgmae_trainers.pretrain.model import PretrainModel
from plan_support import run_module

torch.set_num_threads(1)


def tiny_model(decoder: str, k: int = 8) -> PretrainModel:
    """A randomly initialised tiny PretrainModel on 16^3 crops, patch 8 (8 tokens, 2 visible)."""
    torch.manual_seed(0)
    enc, dec = build_networks(network_config("tiny", crop_size=16, patch_size=8, num_gaussians=k), decoder)
    return PretrainModel(enc, dec, decoder, mask_ratio=0.75).eval()


def structured_crops(n: int = 3) -> torch.Tensor:
    """[n, 1, 16, 16, 16]: a bright block ('organ') on a dimmer background, a little different per crop."""
    x = torch.full((n, 1, 16, 16, 16), 0.2)
    for i in range(n):
        x[i, :, 3:12, 4 + i:13, 5:11] = 0.8
    return x


@pytest.mark.parametrize("decoder", ["gaussian", "hierarchical"])
def test_direct_fit_improves_on_the_decoder_on_every_crop(decoder):
    model, crops = tiny_model(decoder), structured_crops()
    fit = direct_fit(model, crops, steps=25, lr=0.05, batch=2)
    assert torch.all(fit["fitted"] <= fit["start"])
    # A random decoder is far from a block it never saw; its own Gaussians fitted to it are not.
    assert torch.all(fit["fitted"] < 0.9 * fit["start"]), (fit["start"], fit["fitted"])
    # The fit starts from the decoder's own prediction, under masked_errors' masks.
    assert crop_average(fit["start"]) == masked_errors(model, crops, batch=2)[0]


@pytest.mark.parametrize("decoder", ["gaussian", "hierarchical"])
def test_zero_fit_steps_is_the_decoders_mse_exactly(decoder):
    model, crops = tiny_model(decoder), structured_crops()
    fit = direct_fit(model, crops, steps=0, batch=2)
    assert torch.equal(fit["fitted"], fit["start"])
    assert crop_average(fit["fitted"]) == masked_errors(model, crops, batch=2)[0]
    for key, value in fit["raw"].items():
        assert torch.equal(value, fit["raw0"][key]), key


@pytest.mark.parametrize("flag,value,message", [("--fit-steps", "-1", "--fit-steps -1: must be >= 0"),
                                                ("--fit-lr", "0", "--fit-lr 0: must be in (0, 1]"),
                                                ("--fit-lr", "nan", "--fit-lr nan: must be in (0, 1]")])
def test_bad_fit_flags_exit_with_one_line(nnunet_env, flag, value, message):
    proc = run_module("benchmarks.pretrain_quality", ["no_such.pt", flag, value], nnunet_env, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"error: {message}"), proc.stderr


def _checkpoint(tmp_path, decoder: str):
    """A checkpoint_final.pt of tiny_model(decoder), with the metadata load_pretrain_model reads."""
    model = tiny_model(decoder)
    cfg = network_config("tiny", crop_size=16, patch_size=8, num_gaussians=8)
    path = tmp_path / decoder / "checkpoint_final.pt"
    path.parent.mkdir()
    save_final(path, model=model, step=0, metadata={"network_config": cfg, "decoder_type": decoder, "step": 0,
                                                    "crop_size": [16] * 3, "mask_ratio": 0.75})
    return path


def test_table_gives_the_voxel_model_the_gaussian_ceiling_and_draws_a_snapshot(tmp_path, monkeypatch, capsys):
    import benchmarks.pretrain_quality as bench

    # The crops are stubbed: this test is about the table, not about reading preprocessed data.
    monkeypatch.setattr(bench, "evaluation_crops", lambda cases, size, n, seed: structured_crops(n))
    monkeypatch.setattr("medgmae_trainers.pretrain.data.pretraining_cases", lambda *a: ([], None))
    monkeypatch.setattr("medgmae_plans.runtime.paths.ensure_nnunet_env", lambda: None)
    voxel, gauss = _checkpoint(tmp_path, "voxel"), _checkpoint(tmp_path, "gaussian")
    png = tmp_path / "snap.png"
    table = tmp_path / "quality.json"
    assert main([str(voxel), str(gauss), "--crops", "2", "--fit-steps", "3", "--snapshot", str(png),
                 "--json", str(table)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = json.loads(table.read_text())["rows"]  # the printed table's numbers, for benchmarks.transfer
    assert [r["decoder"] for r in rows] == ["voxel", "gaussian"] and rows[0]["ceiling"] == rows[1]["ceiling"]
    assert all(r["ours"] > 0 and r["baseline"] > 0 for r in rows)
    voxel_row, gauss_row = (next(line for line in lines if line.startswith(f"{p}"[-60:])) for p in (voxel, gauss))
    assert voxel_row.split()[5] == gauss_row.split()[5] != "-"  # the same ceiling
    assert any(line.endswith(f"ceiling of {gauss}") for line in lines)
    assert png.is_file() and png.stat().st_size > 1000
    assert main([str(voxel), "--crops", "2", "--fit-steps", "3"]) == 0
    voxel_alone = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{voxel}"[-60:]))
    assert voxel_alone.split()[5] == "-"
