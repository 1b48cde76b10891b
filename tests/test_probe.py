"""`medgmae_probe`: a known answer, noise at chance, determinism, random init against the checkpoint, and the
same nested fraction subsets as `medgmae_train`."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from evaluation.probe import label_dice, main, probe_representation
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


def test_sampled_logits_equal_logits_of_sampled_features():
    field = torch.randn(5, 3, 4, 2)
    points = voxel_points((24, 32, 16))
    w, b = torch.randn(3, 5), torch.randn(3)
    from medgmae_trainers.probe.linear import LinearProbe

    probe = LinearProbe(w, b, 0.0)
    a = sample_field(probe.logits_field(field), 8, points)
    c = sample_field(field, 8, points) @ w.T + b
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


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

    def run(*args):
        code = main(["-d", DATASET, "-c", "3d_fullres", "--checkpoint", str(ckpt), "--fraction", "0.5",
                     "--samples-per-class", "500", "--threads", "1", "--no-pbar", *args])
        return code, capsys.readouterr()

    threads = torch.get_num_threads()
    yield run
    torch.set_num_threads(threads)  # --threads 1 set the whole test process's


def test_command_writes_the_probe_json_and_picture(probe_cli, tmp_path):
    code, out = probe_cli("-o", str(tmp_path / "a"))
    assert code == 0, out.err
    result = json.loads((tmp_path / "a" / "probe.json").read_text())
    assert set(result) == {"scored_on", "cases", "dice", "mean_dice", "baselines", "settings", "inputs"}
    assert result["scored_on"] == "test" and result["cases"] == ["test_case_0", "test_case_1"]
    assert set(result["dice"]) == set(LABELS.values()) == set(result["baselines"]["raw"]["dice"])
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


def test_a_rerun_reuses_probe_json_and_force_probes_again(probe_cli, tmp_path):
    out = tmp_path / "a" / "probe.json"
    code, first = probe_cli("-o", str(tmp_path / "a"))
    assert code == 0, first.err
    made = out.stat().st_mtime_ns

    code, again = probe_cli("-o", str(tmp_path / "a"))
    assert code == 0 and "reused" in again.err and out.stat().st_mtime_ns == made

    code, forced = probe_cli("-o", str(tmp_path / "a"), "--force")
    assert code == 0 and "reused" not in forced.err and out.stat().st_mtime_ns > made


def test_probe_json_is_reused_only_for_the_same_settings_and_files(tmp_path):
    import os

    from evaluation.probe import _inputs, _reusable

    ckpt, data, image, label = tmp_path / "c.pt", tmp_path / "data", tmp_path / "t_0000.nii.gz", tmp_path / "t.nii.gz"
    data.mkdir()
    for path in (ckpt, data / "case_0.b2nd", image, label):
        path.write_bytes(b"x")
    settings = {"seed": 0, "fraction": 0.1}

    def inputs(**changed):
        return json.loads(json.dumps(_inputs({**settings, **changed}, ckpt, data, [("t", image, label)])))

    probe_json = tmp_path / "probe.json"
    probe_json.write_text(json.dumps({"mean_dice": 0.5, "inputs": inputs()}))
    assert _reusable(probe_json, inputs()) is not None
    assert _reusable(probe_json, inputs(seed=1)) is None
    for path in (ckpt, data / "case_0.b2nd", label):  # a new checkpoint, preprocessed case or test label
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert _reusable(probe_json, inputs()) is None
        probe_json.write_text(json.dumps({"mean_dice": 0.5, "inputs": inputs()}))
    (data / "case_1.b2nd").write_bytes(b"y")
    assert _reusable(probe_json, inputs()) is None
    probe_json.write_text("{")  # cut short
    assert _reusable(probe_json, inputs()) is None


def test_command_refuses_bad_input_with_one_line(probe_cli, tmp_path):
    for args, words in ((["--fraction", "2"], "--fraction"), (["--seed", "-1"], "--seed"),
                        (["--fold", "x"], "--fold"), (["--checkpoint", str(tmp_path / "none.pt")], "none.pt")):
        code, out = probe_cli(*args)
        assert code == 2 and words in out.err and len(out.err.strip().splitlines()) == 1, out.err
