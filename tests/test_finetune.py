"""Fine-tuning pieces: fractions, trainer names, encoder loading and interpolation, optimiser, bad input.

The trainer is built the way nnU-Net builds it (plans, configuration, fold, dataset.json, device) on
minimal plans, so initialisation and the settings file are tested without training.
"""
from __future__ import annotations

import json

import numpy as np

import pytest
import torch

from finetune_support import DATASET, fake_checkpoint, labels_json, minimal_preprocessed, small_trainer
from medgmae_plans.runtime import UserError
from medgmae_trainers.finetune.encoder_loading import check_fits, load_encoder, read_pretrained
from medgmae_trainers.finetune.fractions import fraction_tag, parse_fraction, select_cases, tag_fraction
from medgmae_trainers.finetune.optim import WarmupCosine, param_groups
from medgmae_trainers.networks import sincos_pos_embed_3d
from medgmae_trainers.networks.pos_embed import resize_pos_embed
from medgmae_trainers.unetr import build_unetr

torch.set_num_threads(1)
CASES = [f"case_{i:03d}" for i in range(20)]


# ---- fractions ---------------------------------------------------------------------------------
def test_fractions_are_nested_and_deterministic():
    one, ten, all_ = (select_cases(CASES, f) for f in (0.01, 0.1, 1.0))
    assert len(one) == 1 and len(ten) == 2 and sorted(all_) == sorted(CASES)
    assert set(one) <= set(ten) <= set(all_)
    assert select_cases(list(reversed(CASES)), 0.1) == ten  # input order does not matter
    assert select_cases(CASES, 0.1, seed=1) != ten or select_cases(CASES, 0.5, seed=1) != select_cases(CASES, 0.5)
    for a, b in zip((0.05, 0.25, 0.5), (0.25, 0.5, 0.75)):
        assert set(select_cases(CASES, a)) <= set(select_cases(CASES, b))
    assert len(select_cases(CASES[:3], 0.01)) == 1  # at least one case


@pytest.mark.parametrize("bad", ["0", "-0.1", "1.5", "nan", "ten"])
def test_fraction_outside_zero_one_is_refused(bad):
    with pytest.raises(UserError, match="fraction"):
        parse_fraction(bad)


def test_fraction_tags_round_trip():
    assert [fraction_tag(f) for f in (0.01, 0.1, 1.0, 0.025)] == ["f1", "f10", "f100", "f2p5"]
    assert tag_fraction("f2p5") == pytest.approx(0.025) and tag_fraction("f100") == 1.0


def test_trainer_names_resolve_to_nnunet_trainers():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from medgmae_trainers.finetune import trainers

    cls = trainers.MedGMAETrainer_medgmae_f10
    assert issubclass(cls, nnUNetTrainer) and cls.INIT == "medgmae" and cls.FRACTION == 0.1
    made = getattr(trainers, "MedGMAETrainer_medgmaestar_f2p5_long")  # made on demand, then cached
    assert made is trainers.trainer_class("MedGMAETrainer_medgmaestar_f2p5_long") and made.FRACTION == 0.025
    assert not hasattr(trainers, "MedGMAETrainer_imagenet_f10")
    assert trainers.parse_trainer_name("MedGMAETrainer_scratch_f100") == ("scratch", 1.0, None)


# ---- position embeddings ---------------------------------------------------------------------
def test_learned_pos_embed_is_interpolated_between_token_grids():
    """Pretrained on 96^3 crops (grid 6), fine-tuned on 128^3 patches (grid 8): a table that is not the
    sin-cos one (a ramp, as a learned table could be) is interpolated trilinearly by fine-tuning's policy."""
    c = 6
    ramp = torch.zeros(1, 1 + 216, c)
    z, y, x = torch.meshgrid(*[(torch.arange(6) + 0.5) / 6] * 3, indexing="ij")
    ramp[0, 1:, 0], ramp[0, 1:, 1], ramp[0, 1:, 2] = z.flatten(), y.flatten(), x.flatten()
    ramp[0, 0] = 7.0  # cls row
    out = resize_pos_embed(ramp, (6, 6, 6), (8, 8, 8))
    assert out.shape == (1, 1 + 512, c) and torch.all(out[0, 0] == 7.0)
    grid = out[0, 1:, :3].reshape(8, 8, 8, 3)
    centres = (torch.arange(8) + 0.5) / 8  # a linear ramp stays linear in normalised coordinates
    inner = slice(1, 7)
    assert torch.allclose(grid[inner, 0, 0, 0], centres[inner], atol=1e-5)  # z varies along axis 0 (raster z)
    assert torch.allclose(grid[0, 0, inner, 2], centres[inner], atol=1e-5)  # x along axis 2
    same = torch.from_numpy(sincos_pos_embed_3d(48, (4, 4, 4)))[None]
    assert torch.equal(resize_pos_embed(same, (4, 4, 4), (4, 4, 4)), same)  # same grid: unchanged
    assert torch.equal(resize_pos_embed(ramp, (6, 6, 6), (6, 6, 6)), ramp)


# ---- loading the encoder ---------------------------------------------------------------------
def _unetr(img=32, patch=16):
    return build_unetr(1, 3, img_size=[img] * 3, patch_size=patch, hidden_size=48, mlp_dim=192, num_layers=3,
                       num_heads=3, feature_size=4)


def test_encoder_equals_checkpoint_after_loading_and_decoder_keys_are_reported(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "c.pt", crop=32)
    net = _unetr()
    log = []
    report = load_encoder(net, read_pretrained(tmp_path / "c.pt"), log=log.append)
    for key, value in ckpt["encoder"].items():
        assert torch.equal(net.encoder.state_dict()[key], value), key
    assert len(report["loaded"]) == len(ckpt["encoder"]) and report["pos_embed_interpolated"] is None
    assert report["skipped"] and all(k.startswith("decoder.") for k in report["skipped"])
    assert any("not loaded" in line for line in log)


def test_loading_into_a_larger_patch_interpolates_pos_embed(tmp_path):
    fake_checkpoint(tmp_path / "c.pt", crop=32)  # grid 2
    net = _unetr(img=64)  # grid 4
    report = load_encoder(net, read_pretrained(tmp_path / "c.pt"), log=lambda s: None)
    assert report["pos_embed_interpolated"] == {"from": [2, 2, 2], "to": [4, 4, 4]}
    # the checkpoint's fixed sin-cos table is recomputed on the new grid (networks.pos_embed.resize_pos_embed)
    assert torch.equal(net.encoder.pos_embed.data, torch.from_numpy(sincos_pos_embed_3d(48, (4, 4, 4)))[None])
    assert net(torch.randn(1, 1, 64, 64, 64)).shape == (1, 3, 64, 64, 64)


def test_other_encoder_sizes_are_refused(tmp_path):
    fake_checkpoint(tmp_path / "c.pt", crop=32, embed=96)
    with pytest.raises(UserError, match="shape"):
        load_encoder(_unetr(), read_pretrained(tmp_path / "c.pt"), log=lambda s: None)


# ---- bad checkpoints -------------------------------------------------------------------------
def test_missing_corrupt_and_foreign_checkpoints(tmp_path):
    with pytest.raises(UserError, match="no such"):
        read_pretrained(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="bad.pt: not a readable torch checkpoint"):
        read_pretrained(tmp_path / "bad.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a medgmae pretraining checkpoint"):
        read_pretrained(tmp_path / "other.pt")


def test_voxel_mae_checkpoint_with_another_patch_window_or_geometry_is_refused(tmp_path):
    from medgmae_plans.planner import build_plans

    plans = build_plans(DATASET, [[1.5] * 3] * 2, [[40] * 3] * 2, configurations=("3d_fullres", "3d_lowres"))
    fake_checkpoint(tmp_path / "v.pt", decoder="voxel", patch=12, crop=48)
    pre = read_pretrained(tmp_path / "v.pt")
    assert pre.init == "voxelmae"
    check_fits(pre, plans, "3d_fullres")  # its own patch is fine
    with pytest.raises(UserError, match="patch 12"):
        check_fits(pre, plans, "3d_fullres", patch=16)
    with pytest.raises(UserError, match="preset"):
        check_fits(pre, plans, "3d_fullres", preset="base")
    # a 1.5 mm checkpoint on the 3 mm configuration: refused by its spacing, and by its name once recorded
    with pytest.raises(UserError, match=r"v.pt: pretrained at spacing \[1.5, 1.5, 1.5\] mm.*3.0.*3d_lowres"):
        check_fits(pre, plans, "3d_lowres")
    pre.metadata["configuration"] = "3d_fullres"
    with pytest.raises(UserError, match="pretrained on configuration 3d_fullres.*pretrain with -c 3d_lowres"):
        check_fits(pre, plans, "3d_lowres")
    pre.metadata["normalisation"] = {"scheme": "ZScoreNormalization", "hu_window": []}
    with pytest.raises(UserError, match="normalisation"):
        check_fits(pre, plans, "3d_fullres")


# ---- optimiser -------------------------------------------------------------------------------
def test_layer_decay_and_weight_decay_groups():
    net = _unetr()
    groups = param_groups(net, layer_decay=0.5, wd_encoder=0.01, wd_decoder=0.05)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["encoder.blocks.2.attn.qkv.weight"]["lr_scale"] == 0.5
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["lr_scale"] == 0.125
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == 0.0625
    assert by_name["decoder2.transp_conv.conv.weight"]["lr_scale"] == 1.0
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.01
    assert by_name["decoder2.transp_conv.conv.weight"]["weight_decay"] == 0.05
    assert by_name["encoder.cls_token"]["weight_decay"] == 0.0 and by_name["encoder.norm.bias"]["weight_decay"] == 0
    assert groups[0]["part"] == "decoder"
    assert "encoder.pos_embed" not in by_name  # fixed sin-cos, not trained


def test_every_init_gets_the_same_optimiser(nnunet_env, tmp_path):
    """Scratch and pretrained runs differ in their start weights only: the same defaults (the paper's
    AdamW, weight decay 0.05, no layer decay) and the same groups for the same network."""
    from medgmae_trainers.finetune.run_record import Settings

    d = Settings()
    assert (d.layer_decay, d.weight_decay_encoder, d.weight_decay_decoder) == (1.0, 0.05, 0.05)
    net = _unetr()
    groups = param_groups(net, layer_decay=d.layer_decay, wd_encoder=d.weight_decay_encoder,
                          wd_decoder=d.weight_decay_decoder)
    assert {g["lr_scale"] for g in groups} == {1.0} and {g["weight_decay"] for g in groups} == {0.0, 0.05}
    fake_checkpoint(tmp_path / "c.pt", crop=32)
    pretrained, _ = _trainer(nnunet_env, "MedGMAETrainer_medgmae_f10", {"pretrained_checkpoint": str(tmp_path / "c.pt")})
    scratch, _ = _trainer(nnunet_env, "MedGMAETrainer_scratch_f10", {"seed": 1})
    rules = []
    for trainer in (scratch, pretrained):
        trainer.initialize()
        rules.append({(g["lr_scale"], g["weight_decay"]) for g in trainer.optimizer.param_groups})
    assert rules[0] == rules[1] == {(1.0, 0.0), (1.0, 0.05)}


def test_warmup_then_cosine():
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.5}], lr=1.0)
    sched = WarmupCosine(opt, 1e-3, total_iterations=100, warmup_iterations=10, iterations_per_epoch=10)
    lrs = [sched.lr_at(i) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[99] < 1e-5
    sched.step(3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * sched.lr_at(30))


# ---- the trainer as nnU-Net builds it --------------------------------------------------------
def _trainer(nnunet_env, name, settings_changes=None):
    plans = minimal_preprocessed(nnunet_env["nnUNet_preprocessed"])
    return small_trainer(nnunet_env["nnUNet_results"], name, plans, **(settings_changes or {}))


def test_trainer_loads_every_encoder_key_and_scratch_does_not(nnunet_env, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "c.pt", crop=32)
    trainer, folder = _trainer(nnunet_env, "MedGMAETrainer_medgmae_f10",
                               {"pretrained_checkpoint": str(tmp_path / "c.pt"), "export_resampling": "torch"})
    assert trainer.enable_deep_supervision is False and trainer.num_epochs == 2
    trainer.initialize()
    state = trainer.network.encoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["encoder"].items())
    record = json.loads((folder / "medgmae_finetune.json").read_text())
    assert record["results"]["encoder_loading"]["loaded"] == len(ckpt["encoder"])
    # nnU-Net's plans (later copied into the results folder) carry the checkpoint's architecture
    assert trainer.configuration_manager.network_arch_init_kwargs["hidden_size"] == 48
    assert trainer.configuration_manager.configuration["resampling_fn_probabilities"] == "resample_torch_fornnunet"
    assert isinstance(trainer.optimizer, torch.optim.AdamW)

    # another seed than fake_checkpoint's 0, or the fresh weights would be the checkpoint's by construction
    scratch, _ = _trainer(nnunet_env, "MedGMAETrainer_scratch_f10", {"seed": 1})
    scratch.initialize()
    state = scratch.network.encoder.state_dict()
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], ckpt["encoder"]["blocks.0.attn.qkv.weight"])


def test_pretrained_trainer_without_settings_file_says_how_to_start(nnunet_env, capsys):
    """Plain nnUNetv2_train on a pretrained trainer: one line naming medgmae_train --pretrained, exit 2."""
    from medgmae_trainers.finetune.trainers import trainer_class

    plans = minimal_preprocessed(nnunet_env["nnUNet_preprocessed"])
    plans["continue_training"] = False
    with pytest.raises(SystemExit) as stop:
        trainer_class("MedGMAETrainer_medgmae_f10")(plans, "3d_fullres", 0, labels_json(), torch.device("cpu"))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "medgmae_train" in err[0] and "--pretrained CKPT" in err[0]


# ---- nnUNetv2_train on our scratch names trains medgmae_train's run ----------------------------
@pytest.fixture
def clean_env(monkeypatch):
    """The variables our commands set, unset here and restored afterwards (setenv first, so that
    monkeypatch restores them even when they were not set before)."""
    for var in ("nnUNet_extTrainer", "nnUNet_def_n_proc", "nnUNet_compile"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


def _started_trainer(monkeypatch, start) -> "MedGMAETrainer":
    """The trainer that `start()` has nnU-Net's `run_training` build, with training and validation
    replaced by nothing; initialised (network, optimiser, schedule) from seed 0."""
    from medgmae_trainers.finetune.trainers import MedGMAETrainer

    started = []
    monkeypatch.setattr(MedGMAETrainer, "run_training", lambda self: started.append(self))
    monkeypatch.setattr(MedGMAETrainer, "perform_actual_validation", lambda self, save_probabilities=False: None)
    threads = torch.get_num_threads()
    start()
    torch.set_num_threads(threads)  # nnUNetv2_train takes every core for -device cpu
    (trainer,) = started
    torch.manual_seed(0)
    trainer.initialize()
    return trainer


def test_nnunet_train_on_a_scratch_name_trains_what_medgmae_train_does(nnunet_env, clean_env, monkeypatch):
    import sys

    from nnunetv2.run.run_training import run_training_entry

    from medgmae_trainers.finetune import EXT_TRAINER_DIR
    from medgmae_trainers.finetune.cli import main

    minimal_preprocessed(nnunet_env["nnUNet_preprocessed"])
    name = "MedGMAETrainer_scratch_f10"
    monkeypatch.setenv("nnUNet_extTrainer", str(EXT_TRAINER_DIR))  # the documented export
    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", name, "-p", "MedGMAEPlans",
                                      "-device", "cpu"])
    plain = _started_trainer(monkeypatch, run_training_entry)  # no run record: the trainer makes the settings

    def medgmae_train():
        assert main(["Phantom", "3d_fullres", "--init", "scratch", "--fraction", "0.1", "--device", "cpu"]) == 0
    ours = _started_trainer(monkeypatch, medgmae_train)

    run_only = ("status", "results", "train_cases", "val_cases")
    record = {k: v for k, v in ours.medgmae.to_json().items() if k not in run_only}
    assert {k: v for k, v in plain.medgmae.to_json().items() if k not in run_only} == record
    # medgmae_train's flag defaults are what users ran: torch resampling, the CPU validation
    assert record["export_resampling"] == "torch" and record["preset"] == "base" and record["fraction"] == 0.1
    assert (record["val_step_size"], record["val_mirroring"]) == (1.0, False)

    # the same network, to the weight, from the same plans
    assert plain.configuration_manager.configuration == ours.configuration_manager.configuration
    a, b = plain.network.state_dict(), ours.network.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the same optimiser, schedule and loop lengths
    for attr in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "initial_lr",
                 "weight_decay", "save_every", "enable_deep_supervision"):
        assert getattr(plain, attr) == getattr(ours, attr), attr

    def hyperparameters(trainer):
        return [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]

    for epoch in (0, 1, 30, ours.num_epochs - 1):  # nnU-Net steps the scheduler at each epoch's start
        plain.lr_scheduler.step(epoch)
        ours.lr_scheduler.step(epoch)
        assert hyperparameters(plain) == hyperparameters(ours), epoch


# ---- the command's bad input -----------------------------------------------------------------
@pytest.fixture
def cli(nnunet_env, monkeypatch, capsys):
    for var in ("nnUNet_extTrainer", "nnUNet_def_n_proc", "nnUNet_compile"):
        monkeypatch.delenv(var, raising=False)
    minimal_preprocessed(nnunet_env["nnUNet_preprocessed"])
    from medgmae_trainers.finetune.cli import main

    def run(*args):
        code = main([*map(str, args), "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        return code, err
    return run


def test_command_refuses_bad_input_with_one_line(cli, tmp_path):
    code, err = cli("NoSuchData", "3d_fullres", "--init", "scratch")
    assert code == 2 and "no dataset matches 'NoSuchData'" in err[-1] and "Traceback" not in "\n".join(err)
    code, err = cli("Phantom", "3d_fullres", "--init", "scratch", "--fraction", "1.5")
    assert code == 2 and "outside (0, 1]" in err[-1]
    code, err = cli("Phantom", "3d_fullres", "--pretrained", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt: no such pretraining checkpoint" in err[-1]
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip")
    code, err = cli("Phantom", "3d_fullres", "--pretrained", tmp_path / "corrupt.pt")
    assert code == 2 and "corrupt.pt: not a readable torch checkpoint" in err[-1]
    fake_checkpoint(tmp_path / "voxel12.pt", decoder="voxel", patch=12, crop=48)
    code, err = cli("Phantom", "3d_fullres", "--pretrained", tmp_path / "voxel12.pt", "--patch", "16")
    assert code == 2 and "voxel12.pt: pretrained with patch 12^3" in err[-1]
    code, err = cli("Phantom", "2d", "--init", "scratch")
    assert code == 2 and "no configuration '2d'" in err[-1]
    code, err = cli("Phantom", "3d_fullres", "--pretrained", tmp_path / "voxel12.pt")
    assert code == 2 and "not a multiple of the ViT patch 12" in err[-1]
    fake_checkpoint(tmp_path / "voxel16.pt", decoder="voxel", patch=16, crop=32)
    code, err = cli("Phantom", "3d_fullres", "--pretrained", tmp_path / "voxel16.pt", "--trainer",
                    "MedGMAETrainer_medgmae_f100")
    assert code == 2 and "says init medgmae" in err[-1]


@pytest.mark.parametrize("native, allowed, expected", [(True, True, True), (True, False, False), (False, True, False)])
def test_cpu_training_step_autocasts_to_bf16_only_where_the_cpu_has_it(nnunet_env, monkeypatch, native, allowed,
                                                                        expected):
    """The forward runs under bf16 autocast on a CPU with native bf16 unless the run says --fp32;
    either way the step trains the float32 weights (nnU-Net's loss, clipping and optimiser step)."""
    from medgmae_trainers.finetune import trainers

    monkeypatch.setattr(trainers, "native_cpu_bf16", lambda: native)
    monkeypatch.setattr("medgmae_trainers.run.precision.native_cpu_bf16", lambda: native)
    trainer, _ = _trainer(nnunet_env, "MedGMAETrainer_scratch_f10", {"cpu_bf16": allowed})
    trainer.initialize()
    seen = []
    trainer.network.out.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    before = trainer.network.out.conv.conv.weight.detach().clone()
    batch = {"data": torch.randn(2, 1, 32, 32, 32), "target": torch.randint(0, 3, (2, 1, 32, 32, 32)).float()}
    loss = trainer.train_step(batch)["loss"]
    assert seen == [(expected, torch.bfloat16 if expected else torch.float32)]
    assert np.isfinite(loss) and trainer.network.out.conv.conv.weight.dtype == torch.float32
    assert not torch.equal(before, trainer.network.out.conv.conv.weight)
    batch["data"][0, 0, 0, 0, 0] = float("nan")  # either step's divergence is one line naming the iteration
    with pytest.raises(UserError, match="non-finite .* at iteration 2 "):
        trainer.train_step(batch)


# ---- seeds and nnU-Net's own network as the baseline row ------------------------------------
def _from_settings(nnunet_env, name: str, **given):
    """The trainer `name` as medgmae_train sets it up: `new_settings` from the flags given, then nnU-Net."""
    from medgmae_trainers.finetune.run_record import fold_folder, new_settings, write_record
    from medgmae_trainers.finetune.trainers import parse_trainer_name, trainer_class

    plans = minimal_preprocessed(nnunet_env["nnUNet_preprocessed"])
    init, fraction, _ = parse_trainer_name(name)
    settings = new_settings(plans, "3d_fullres", 0, name, fraction, "cpu", init=init, epochs=2,
                            iterations_per_epoch=5, **given)
    write_record(fold_folder(nnunet_env["nnUNet_results"], DATASET, name, "MedGMAEPlans", "3d_fullres", 0), settings)
    return trainer_class(name)({**plans, "continue_training": False}, "3d_fullres", 0, labels_json(),
                               torch.device("cpu"))


def test_building_a_trainer_leaves_the_callers_plans_unchanged(nnunet_env):
    """The run's patch, network and resampling go into the trainer's own copy of the plans."""
    import copy

    from medgmae_trainers.finetune.run_record import fold_folder, new_settings, write_record
    from medgmae_trainers.finetune.trainers import trainer_class

    name = "MedGMAETrainer_scratch_f10"
    plans = {**minimal_preprocessed(nnunet_env["nnUNet_preprocessed"]), "continue_training": False}
    settings = new_settings(plans, "3d_fullres", 0, name, 0.1, "cpu", init="scratch", epochs=1,
                            iterations_per_epoch=1, patch_size=32)
    write_record(fold_folder(nnunet_env["nnUNet_results"], DATASET, name, "MedGMAEPlans", "3d_fullres", 0), settings)
    before = copy.deepcopy(plans)
    trainer = trainer_class(name)(plans, "3d_fullres", 0, labels_json(), torch.device("cpu"))
    assert plans == before
    assert list(trainer.configuration_manager.patch_size) == [32, 32, 32]


def test_nnunet_init_trains_nnunets_plainconvunet_with_its_own_recipe(nnunet_env):
    """`--init nnunet`: PlainConvUNet as nnU-Net plans it for the patch, deep supervision, SGD at
    nnU-Net's lr with its poly schedule; the bf16 CPU step trains it; the predictor's build (no deep
    supervision) gives one output."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    trainer = _from_settings(nnunet_env, "MedGMAETrainer_nnunet_f10_r0", preset=None, cpu_bf16=True)
    trainer.initialize()
    assert isinstance(trainer.network, PlainConvUNet) and trainer.enable_deep_supervision
    assert trainer.configuration_manager.network_arch_class_name.endswith("PlainConvUNet")
    assert trainer.configuration_manager.network_arch_init_kwargs["features_per_stage"][:2] == [32, 64]
    assert isinstance(trainer.optimizer, torch.optim.SGD) and trainer.optimizer.param_groups[0]["lr"] == 1e-2
    scales = trainer._get_deep_supervision_scales()
    target = [torch.randint(0, 4, (2, 1, *[int(32 * s) for s in scale])).float() for scale in scales]
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step({"data": torch.randn(2, 1, 32, 32, 32), "target": target})["loss"]
    assert np.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters()))
    single = type(trainer).build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 4,
                                                      enable_deep_supervision=False)
    assert single(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 4, 32, 32, 32)


def test_unetr_flags_are_refused_for_nnunets_network(cli):
    code, err = cli("Phantom", "3d_fullres", "--init", "nnunet", "--preset", "tiny")
    assert code == 2 and "--preset" in err[-1] and "PlainConvUNet" in err[-1]


def test_the_seed_draws_the_new_weights(nnunet_env):
    def first_weights(seed):
        trainer = _from_settings(nnunet_env, f"MedGMAETrainer_scratch_f10_s{seed}x", preset="tiny", seed=seed)
        trainer.initialize()
        return trainer.network.out.conv.conv.weight.detach().clone()

    assert torch.equal(first_weights(3), first_weights(3))
    assert not torch.equal(first_weights(3), first_weights(4))


def test_the_seed_seeds_nnunets_augmentation_workers(monkeypatch):
    """nnU-Net builds its augmenters with seeds=None (workers seeded from the OS); a run's get the
    run's seed, disjoint between the training and the validation augmenter."""
    from medgmae_trainers.finetune import nnunet_hooks

    class Recorder:
        def __init__(self, data_loader, transform, num_processes, seeds=None, **kwargs):
            self.seeds = seeds

    monkeypatch.setattr(nnunet_hooks.TRAINER_MODULE, "NonDetMultiThreadedAugmenter", Recorder)
    with nnunet_hooks.seeded_augmenter(7):
        train = nnunet_hooks.TRAINER_MODULE.NonDetMultiThreadedAugmenter(None, None, num_processes=2, seeds=None)
        val = nnunet_hooks.TRAINER_MODULE.NonDetMultiThreadedAugmenter(None, None, num_processes=1, seeds=None)
    assert train.seeds == [7000, 7001] and val.seeds == [7100]
    assert nnunet_hooks.TRAINER_MODULE.NonDetMultiThreadedAugmenter is Recorder  # restored afterwards


def test_the_validation_predictor_hook_sets_its_arguments_and_always_restores(monkeypatch):
    """Inside the block nnU-Net's validation builds its predictor with our step and mirroring; after
    it, also when the validation raised, the trainer module holds nnU-Net's own class again."""
    from medgmae_trainers.finetune import nnunet_hooks

    class Recorder:
        def __init__(self, tile_step_size=0.5, use_mirroring=True, **kwargs):
            self.step, self.mirroring = tile_step_size, use_mirroring

    monkeypatch.setattr(nnunet_hooks.TRAINER_MODULE, "nnUNetPredictor", Recorder)
    with pytest.raises(RuntimeError, match="validation failed"):
        with nnunet_hooks.validation_predictor(1.0, False):
            made = nnunet_hooks.TRAINER_MODULE.nnUNetPredictor(tile_step_size=0.5, use_mirroring=True)
            raise RuntimeError("validation failed")
    assert (made.step, made.mirroring) == (1.0, False)
    assert nnunet_hooks.TRAINER_MODULE.nnUNetPredictor is Recorder


def test_continue_accepts_the_nnunet_runs_own_plans(nnunet_env):
    """--continue of an `--init nnunet` run: the results folder's plans.json holds PlainConvUNet's
    arch_kwargs as JSON (lists), which are the run's own (tuples in memory), so it is not refused as
    another architecture; a folder of another architecture still is."""
    from medgmae_plans.runtime import UserError
    from medgmae_trainers.finetune.cli import check_existing
    from medgmae_trainers.finetune.plainconv import plainconv_architecture
    from medgmae_trainers.finetune.run_record import fold_folder, new_settings, write_record

    plans = minimal_preprocessed(nnunet_env["nnUNet_preprocessed"])
    name = "MedGMAETrainer_nnunet_f10_r0"
    settings = new_settings(plans, "3d_fullres", 0, name, 0.1, "cpu", init="nnunet", epochs=2, iterations_per_epoch=5)
    folder = fold_folder(nnunet_env["nnUNet_results"], DATASET, name, "MedGMAEPlans", "3d_fullres", 0)
    write_record(folder, settings)  # the run to continue
    written = {"configurations": {"3d_fullres": {"architecture": plainconv_architecture(settings.arch_kwargs)}}}
    (folder.parent / "plans.json").write_text(json.dumps(written))
    check_existing(settings, folder, resume=True)

    written["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"] = 2
    (folder.parent / "plans.json").write_text(json.dumps(written))
    with pytest.raises(UserError, match="another UNETR architecture"):
        check_existing(settings, folder, resume=True)
