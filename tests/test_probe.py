"""`medgmae_probe`: a known answer, noise at chance, determinism, random init against the checkpoint, the
same nested fraction subsets as `medgmae_train`, and several (checkpoint, fraction) pairs in one run: the
numbers of separate runs, skipped when done, probed again when their settings change."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from evaluation.probe import main
from evaluation.probe_pairs import label_dice, probe_representation
from medgmae_trainers.probe.cases import ProbeCase, probe_cases
from medgmae_trainers.probe.features import EncoderFeatures, RawPatches, sample_field, voxel_points

from finetune_support import DATASET, fake_checkpoint, minimal_preprocessed, small_trainer

LABELS = {1: "organ1", 2: "organ2"}
LOG = logging.getLogger("test_probe")


def _labels(rng, size: int) -> np.ndarray:
    """Two balls of random centre and radius in a cube of background."""
    z, y, x = np.mgrid[:size, :size, :size]
    seg = np.zeros((size,) * 3, np.int16)
    for label in (1, 2):
        c = rng.uniform(0.3 * size, 0.7 * size, 3)
        r = rng.uniform(0.12 * size, 0.22 * size)
        seg[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] = label
    return seg


def _cases(n: int, size: int = 16, seed: int = 0) -> list[ProbeCase]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        seg = _labels(rng, size)
        image = (0.3 + 0.2 * seg + 0.05 * rng.standard_normal(seg.shape)).astype(np.float32)
        cases.append(ProbeCase(f"case_{i}", image, seg))
    return cases


class _Field:
    """A stride-1 representation given by a function of the case's labels (the tests' known answers)."""

    stride = 1

    def __init__(self, name, width, make):
        self.name, self.width, self.make = name, width, make

    def fit(self, cases):
        pass

    def field(self, image):
        return self.make(image)


def _probe(rep, train, val, scored, seed=0):
    return probe_representation(rep, train, val, scored, LABELS, 3, seed, 500, LOG)


def test_features_that_encode_the_label_give_dice_one_and_noise_gives_chance():
    train, val, test = _cases(2), _cases(2, seed=1), _cases(3, seed=2)
    by_image = {id(c.image): c.seg for c in train + val + test}
    one_hot = _Field("label", 3, lambda image: torch.nn.functional.one_hot(
        torch.as_tensor(by_image[id(image)]).long(), 3).permute(3, 0, 1, 2).float())
    exact = _probe(one_hot, train, val, test)
    dice, mean = label_dice(exact.summary, LABELS)
    assert dice == {"organ1": 1.0, "organ2": 1.0} and mean == 1.0

    noise_rng = torch.Generator().manual_seed(0)
    noise = _Field("noise", 8, lambda image: torch.randn(8, *image.shape, generator=noise_rng))
    dice, mean = label_dice(_probe(noise, train, val, test).summary, LABELS)
    # a balanced guess labels about a third of the voxels with each class: Dice 2pq/(p+q), q = 1/3
    fractions = [np.mean([(c.seg == k).mean() for c in test]) for k in LABELS]
    chance = np.mean([2 * p / 3 / (p + 1 / 3) for p in fractions])
    assert abs(mean - chance) < 0.1, (mean, chance)


def test_per_case_dice_of_a_label_in_neither_reference_nor_prediction_is_null(tmp_path):
    """nnU-Net's NaN Dice becomes null in probe.json's per_case, which strict JSON readers accept."""
    from evaluation.probe_pairs import per_case_dice, score
    from medgmae_plans.runtime.atomic import write_json_atomic

    cases = _cases(2)
    cases[1].seg[cases[1].seg == 2] = 0  # organ2 is not in the second case ...
    segs = [c.seg.copy() for c in cases]  # ... nor in its prediction
    per_case = per_case_dice(score(cases, segs, LABELS), LABELS)
    assert per_case == {"case_0": {"organ1": 1.0, "organ2": 1.0}, "case_1": {"organ1": 1.0, "organ2": None}}
    write_json_atomic(tmp_path / "p.json", per_case)

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads((tmp_path / "p.json").read_text(encoding="utf-8"), parse_constant=refuse) == per_case


def test_sampled_logits_equal_logits_of_sampled_features():
    field = torch.randn(5, 3, 4, 2)
    points = voxel_points((24, 32, 16))
    w, b = torch.randn(3, 5), torch.randn(3)
    from medgmae_trainers.probe.linear import LinearProbe

    probe = LinearProbe(w, b, 0.0)
    a = sample_field(probe.logits_field(field), 8, points)
    c = sample_field(field, 8, points) @ w.T + b
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(24, 32, 16), (21, 30, 9)])  # the grid's full extent, and a padded image
def test_upsampled_field_is_the_field_sampled_at_every_voxel(shape):
    from medgmae_trainers.probe.features import upsample_field
    from medgmae_trainers.probe.linear import LinearProbe

    field = torch.randn(5, 3, 4, 2)
    sampled = sample_field(field, 8, voxel_points(shape)).T.reshape(5, *shape)
    torch.testing.assert_close(upsample_field(field, 8, shape), sampled, rtol=1e-5, atol=1e-5)
    probe = LinearProbe(torch.randn(3, 5), torch.randn(3), 0.0)
    expected = sample_field(probe.logits_field(field), 8, voxel_points(shape)).argmax(1).reshape(shape)
    assert np.array_equal(probe.segment(field, 8, shape), expected.numpy())


def _checkpoint(tmp_path):
    from medgmae_trainers.finetune.encoder_loading import read_pretrained

    fake_checkpoint(tmp_path / "c.pt", patch=8, crop=16, embed=24, depth=3, heads=3)
    return read_pretrained(tmp_path / "c.pt")


def test_probe_is_deterministic_and_random_init_differs_from_the_checkpoint(tmp_path):
    train, val, test = _cases(2, size=20), _cases(1, size=20, seed=1), _cases(2, size=20, seed=2)
    from medgmae_trainers.pretrain.pretrained import load_pretrained
    from medgmae_trainers.networks.vit import ViT3D

    pre = _checkpoint(tmp_path)
    random_rep = EncoderFeatures(ViT3D(**pre.encoder_config), 16)
    loaded = ViT3D(**pre.encoder_config)
    load_pretrained(loaded, pre)
    pretrained_rep = EncoderFeatures(loaded, 16)
    assert pretrained_rep.width == 24 * 3  # the two skips UNETR reads at patch 8 and the final tokens
    assert not torch.allclose(random_rep.field(test[0].image), pretrained_rep.field(test[0].image))

    runs = [_probe(pretrained_rep, train, val, test) for _ in range(2)]
    assert runs[0].summary == runs[1].summary and runs[0].l2 == runs[1].l2
    assert all(np.array_equal(a, b) for a, b in zip(runs[0].segmentations, runs[1].segmentations))
    raw = RawPatches(8, pretrained_rep.width)
    cells = sum(int(np.prod([-(-n // 8) for n in c.image.shape])) for c in train)
    assert _probe(raw, train, val, test).width == min(72, 8 ** 3, cells)  # PCA: at most a component per cell


def test_fraction_subsets_are_medgmae_trains(nnunet_env):
    """The probe fits on exactly the cases `MedGMAETrainer.do_split` trains on, and validates on its."""
    from preprocessing.preprocess import _save_case

    plans = minimal_preprocessed(nnunet_env["nnUNet_preprocessed"])
    data = nnunet_env["nnUNet_preprocessed"] / DATASET / plans["configurations"]["3d_fullres"]["data_identifier"]
    (data / "placeholder.b2nd").unlink()
    (data / "placeholder_seg.b2nd").unlink()
    (data / "placeholder.pkl").unlink()
    for i in range(23):
        _save_case(np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.int16), {"spacing": [1.5] * 3},
                   str(data / f"case_{i:03d}"), (4, 4, 4))
    for name, fraction in (("MedGMAETrainer_scratch_f10", 0.1), ("MedGMAETrainer_scratch_f50", 0.5)):
        trainer, _ = small_trainer(nnunet_env["nnUNet_results"], name, plans)
        tr, val = trainer.do_split()
        (nnunet_env["nnUNet_preprocessed"] / DATASET / "splits_final.json").unlink()  # the probe must not need it
        split = probe_cases(nnunet_env["nnUNet_preprocessed"] / DATASET, data, 0, fraction,
                            trainer.medgmae.fraction_seed)
        assert split.train == list(tr) and split.val == list(val) and split.fold_train == 18


# ---------------------------------------------------------------- the command on a small dataset

def _dataset(env, n: int = 10, n_test: int = 2, size: int = 24):
    """A preprocessed dataset of `n` ball cases at 1.5 mm with a 16^3 patch, and `n_test` raw test cases."""
    import SimpleITK as sitk

    from preprocessing.preprocess import _save_case

    plans = minimal_preprocessed(env["nnUNet_preprocessed"], patch=(16, 16, 16), n_labels=2)
    folder = env["nnUNet_preprocessed"] / DATASET
    data = folder / plans["configurations"]["3d_fullres"]["data_identifier"]
    for p in data.iterdir():
        p.unlink()
    for case in _cases(n, size):
        _save_case(case.image[None], case.seg[None], {"spacing": [1.5] * 3}, str(data / case.name), (16, 16, 16))
    raw = env["nnUNet_raw"] / DATASET
    for sub in ("imagesTs", "labelsTs"):
        (raw / sub).mkdir(parents=True)
    for case in _cases(n_test, size, seed=7):
        hu = -175 + 425 * case.image + 0.5  # never exactly 0 HU: nnU-Net crops to the nonzero box
        for array, path in ((hu.astype(np.float32), raw / "imagesTs" / f"test_{case.name}_0000.nii.gz"),
                            (case.seg.astype(np.uint8), raw / "labelsTs" / f"test_{case.name}.nii.gz")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((1.5, 1.5, 1.5))
            sitk.WriteImage(image, str(path))
    return folder


@pytest.fixture
def probe_cli(nnunet_env, tmp_path, capsys):
    _dataset(nnunet_env)
    ckpt = tmp_path / "pretrain" / "checkpoint_final.pt"
    ckpt.parent.mkdir()
    fake_checkpoint(ckpt, patch=8, crop=16, embed=24, depth=3, heads=3, seed=3)  # not --seed 0's draw
    step = ckpt.parent / "checkpoint_step_0000001.pt"  # a learning curve's earlier point: the same architecture
    fake_checkpoint(step, patch=8, crop=16, embed=24, depth=3, heads=3, seed=4)

    def run(*args):
        code = main(["-d", DATASET, "-c", "3d_fullres", "--checkpoint", str(ckpt), "--fraction", "0.5",
                     "--samples-per-class", "500", "--threads", "1", "--no-pbar", *args])
        return code, capsys.readouterr()

    run.final, run.step = ckpt, step
    threads = torch.get_num_threads()
    yield run
    torch.set_num_threads(threads)  # --threads 1 set the whole test process's


def test_command_writes_the_probe_json_and_picture(probe_cli, tmp_path):
    code, out = probe_cli("-o", str(tmp_path / "a"))
    assert code == 0, out.err
    result = json.loads((tmp_path / "a" / "probe.json").read_text())
    assert set(result) == {"scored_on", "cases", "dice", "mean_dice", "per_case", "baselines", "settings"}
    assert result["scored_on"] == "test" and result["cases"] == ["test_case_0", "test_case_1"]
    assert set(result["dice"]) == set(LABELS.values()) == set(result["baselines"]["raw"]["dice"])
    for block in (result, result["baselines"]["raw"]):  # per case, and its mean over the cases is the Dice
        assert list(block["per_case"]) == result["cases"]
        for name, dice in block["dice"].items():
            assert np.nanmean([np.nan if c[name] is None else c[name] for c in block["per_case"].values()]) == \
                pytest.approx(dice, nan_ok=True)
    assert result["settings"]["l2_grid"][-1] == 1e-6 and len(result["settings"]["l2_by_validation"]["raw"]) == 7
    assert not (tmp_path / "a" / "probe_runs.json").exists()  # one pair: today's layout
    assert result["settings"]["train_cases"] and len(result["settings"]["train_cases"]) == 4
    assert (tmp_path / "a" / "probe_overlay.png").stat().st_size > 0
    assert "mean" in out.out and "raw" in out.out

    code, _ = probe_cli("-o", str(tmp_path / "b"))
    again = json.loads((tmp_path / "b" / "probe.json").read_text())
    for key in ("dice", "mean_dice", "baselines"):
        assert again[key] == result[key]

    code, _ = probe_cli("-o", str(tmp_path / "c"), "--random-init")
    scratch = json.loads((tmp_path / "c" / "probe.json").read_text())
    assert scratch["settings"]["init"] == "random-init" and result["settings"]["init"] == "pretrained"
    assert scratch["baselines"] == result["baselines"]  # the raw baseline does not depend on the encoder
    assert scratch["settings"]["l2_by_validation"]["random-init"] != result["settings"]["l2_by_validation"]["pretrained"]


def _same_but_timing(result: dict) -> dict:
    return {**result, "settings": {k: v for k, v in result["settings"].items() if k != "wall_s"}}


def test_several_pairs_give_single_runs_numbers_and_a_rerun_skips_them(probe_cli, tmp_path):
    """Two checkpoints x two fractions in one run: each pair's probe.json is the one a run of that pair alone
    writes (cases read once, fields cached per checkpoint, the raw baseline fitted once per fraction); the same
    command again skips every pair and rewrites none."""
    several = ["--checkpoint", str(probe_cli.step), str(probe_cli.final), "--fraction", "0.5", "1.0"]
    code, out = probe_cli("-o", str(tmp_path / "multi"), *several)
    assert code == 0, out.err
    runs = json.loads((tmp_path / "multi" / "probe_runs.json").read_text(encoding="utf-8"))
    folders = ["checkpoint_step_0000001_f50", "checkpoint_step_0000001_f100", "checkpoint_final_f50",
               "checkpoint_final_f100"]
    assert [r["folder"] for r in runs["pairs"]] == folders
    assert [r["state"] for r in runs["pairs"]] == ["probed"] * 4
    assert all(r["probe_json"] == f"{r['folder']}/probe.json" and r["mean_dice"] is not None for r in runs["pairs"])
    assert all(folder in out.out for folder in folders)  # the pairs' table

    results = {}
    for row in runs["pairs"]:
        folder = tmp_path / "multi" / row["folder"]
        results[row["folder"]] = json.loads((folder / "probe.json").read_text(encoding="utf-8"))
        assert (folder / "probe_overlay.png").stat().st_size > 0
        code, out = probe_cli("-o", str(tmp_path / row["folder"]), "--checkpoint", row["checkpoint"],
                              "--fraction", str(row["fraction"]))
        assert code == 0, out.err
        alone = json.loads((tmp_path / row["folder"] / "probe.json").read_text(encoding="utf-8"))
        assert _same_but_timing(alone) == _same_but_timing(results[row["folder"]]), row["folder"]
    assert results[folders[0]]["dice"] != results[folders[2]]["dice"]  # two checkpoints, two probes
    assert results[folders[0]]["baselines"] == results[folders[2]]["baselines"]  # one baseline per fraction
    assert results[folders[0]]["settings"]["train_cases"] != results[folders[1]]["settings"]["train_cases"]

    stamps = {f: (tmp_path / "multi" / f / "probe.json").stat().st_mtime_ns for f in folders}
    code, out = probe_cli("-o", str(tmp_path / "multi"), *several)
    assert code == 0, out.err
    assert out.err.count("exists (same settings); skipped") == 4 and "probing" not in out.err
    assert stamps == {f: (tmp_path / "multi" / f / "probe.json").stat().st_mtime_ns for f in folders}
    runs = json.loads((tmp_path / "multi" / "probe_runs.json").read_text(encoding="utf-8"))
    assert [r["state"] for r in runs["pairs"]] == ["exists"] * 4


def test_a_stopped_run_continues_and_other_settings_are_probed_again(probe_cli, tmp_path, monkeypatch):
    import evaluation.probe_pairs as probe_pairs

    out_dir = tmp_path / "curve"
    several = ["-o", str(out_dir), "--fraction", "0.5", "1.0"]
    first, second = out_dir / "checkpoint_final_f50" / "probe.json", out_dir / "checkpoint_final_f100" / "probe.json"
    done, calls = probe_pairs.pair_result, []

    def stopped_at_the_second_pair(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C while the second pair is being probed
        return done(*args)

    monkeypatch.setattr(probe_pairs, "pair_result", stopped_at_the_second_pair)
    code, out = probe_cli(*several)
    assert code == 130 and first.is_file() and not second.exists(), out.err
    runs = json.loads((out_dir / "probe_runs.json").read_text(encoding="utf-8"))
    assert [r["state"] for r in runs["pairs"]] == ["probed", "pending"]
    assert runs["pairs"][1]["mean_dice"] is None
    monkeypatch.setattr(probe_pairs, "pair_result", done)

    stamp = first.stat().st_mtime_ns
    code, out = probe_cli(*several)
    assert code == 0, out.err
    assert f"{first}: exists" in out.err and f"{second}: exists" not in out.err and second.is_file()
    assert first.stat().st_mtime_ns == stamp

    # a probe.json of other settings is probed again: another checkpoint path, or another --samples-per-class
    edited = json.loads(second.read_text(encoding="utf-8"))
    edited["settings"]["checkpoint"] = str(tmp_path / "elsewhere.pt")
    second.write_text(json.dumps(edited), encoding="utf-8")
    code, out = probe_cli(*several)
    assert code == 0 and f"{first}: exists" in out.err and f"{second}: other settings (checkpoint" in out.err
    assert json.loads(second.read_text(encoding="utf-8"))["settings"]["checkpoint"] == str(probe_cli.final)
    code, out = probe_cli(*several, "--samples-per-class", "400")
    assert code == 0 and "exists" not in out.err, out.err
    assert json.loads(first.read_text(encoding="utf-8"))["settings"]["samples_per_class"] == 400


def test_command_refuses_bad_input_with_one_line(probe_cli, tmp_path):
    other = tmp_path / "other" / "checkpoint_wide.pt"
    other.parent.mkdir()
    fake_checkpoint(other, patch=8, crop=16, embed=48, depth=3, heads=3)
    twin = tmp_path / "twin" / "checkpoint_final.pt"
    twin.parent.mkdir()
    twin.write_bytes(probe_cli.final.read_bytes())
    for args, words in ((["--fraction", "2"], "--fraction"), (["--seed", "-1"], "--seed"),
                        (["--fold", "x"], "--fold"), (["--checkpoint", str(tmp_path / "none.pt")], "none.pt"),
                        (["--fraction", "0.5", "0.50"], "--fraction 0.50"),
                        (["--checkpoint", str(probe_cli.final), str(other)], str(other)),
                        (["--checkpoint", str(probe_cli.final), str(twin)], str(twin)),
                        (["--checkpoint", str(probe_cli.final), str(probe_cli.step), "--random-init"],
                         "--random-init")):
        code, out = probe_cli(*args)
        assert code == 2 and words in out.err and len(out.err.strip().splitlines()) == 1, out.err
