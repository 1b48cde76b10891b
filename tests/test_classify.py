"""medgmae_classify: encoder loading, head and loss, position embeddings, AUROC + bootstrap against
scikit-learn, preprocessing, the CT-RATE converter, and the command end to end (tiny volumes)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from plan_support import nnunet_folders

from medgmae_plans.constants import NORMALISATION
from medgmae_plans.runtime import UserError
from medgmae_trainers.classification import metrics
from medgmae_trainers.classification.cli import main as classify
from medgmae_trainers.classification.data import Geometry, Source, crop_or_pad, fraction_subset, preprocess_image
from medgmae_trainers.classification.model import Classifier, build_classifier
from medgmae_trainers.networks import ViT3D, sincos_pos_embed_3d
from medgmae_trainers.networks.pos_embed import is_sincos, resize_pos_embed, set_token_grid
from preprocessing.layouts.classification import read_labels
from medgmae_trainers.pretrain.pretrained import pretrained_vit
from medgmae_trainers.pretrain.checkpoint import FORMAT as PRETRAIN_FORMAT

TINY_ENCODER = dict(img_size=16, patch_size=8, in_chans=1, embed_dim=48, depth=2, num_heads=2, mlp_ratio=2.0,
                    drop_path_rate=0.0)


def _pretrain_checkpoint(path: Path, encoder: ViT3D | None = None, drop: str | None = None) -> Path:
    torch.manual_seed(0)
    encoder = encoder or ViT3D(**TINY_ENCODER)
    state = encoder.state_dict()
    if drop:
        state.pop(drop)
    torch.save({"format": PRETRAIN_FORMAT, "metadata": {"encoder_config": encoder.config, "preset": "test", "normalisation": NORMALISATION},
                "encoder": state, "model": {}, "step": 1}, path)
    return path


# --- encoder, head, position embeddings -------------------------------------------------------------

def test_pretrained_encoder_loads_every_key(tmp_path):
    torch.manual_seed(3)
    src = ViT3D(**TINY_ENCODER)
    with torch.no_grad():
        src.blocks[1].mlp.fc2.weight.add_(1.0)  # differs from any fresh initialisation
    ckpt = _pretrain_checkpoint(tmp_path / "ck.pt", src)
    enc, meta = pretrained_vit(ckpt)
    assert meta["load_report"]["loaded_keys"] == len(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k


@pytest.mark.parametrize("breakage", ["missing", "shape", "foreign", "absent"])
def test_bad_pretrained_checkpoint_is_one_clear_error(tmp_path, breakage):
    path = tmp_path / "ck.pt"
    if breakage == "missing":
        _pretrain_checkpoint(path, drop="blocks.0.attn.qkv.weight")
    elif breakage == "shape":
        enc = ViT3D(**TINY_ENCODER)
        state = enc.state_dict()
        state["norm.weight"] = torch.ones(7)
        torch.save({"format": PRETRAIN_FORMAT, "metadata": {"encoder_config": enc.config, "normalisation": NORMALISATION}, "encoder": state}, path)
    elif breakage == "foreign":
        path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match=str(path.name)) as err:
        pretrained_vit(path)
    if breakage == "missing":
        assert "blocks.0.attn.qkv.weight" in str(err.value)


def test_sincos_pos_embed_is_recomputed_for_a_new_grid():
    enc = ViT3D(**TINY_ENCODER)  # grid 2x2x2
    assert is_sincos(enc.pos_embed, enc.grid)
    new = resize_pos_embed(enc.pos_embed.data, enc.grid, (2, 4, 3))
    assert torch.equal(new, torch.from_numpy(sincos_pos_embed_3d(48, (2, 4, 3)))[None])
    # Token (i, j, k) keeps its pretraining vector on the larger grid: row of (1, 1, 1) in both tables.
    assert torch.equal(new[0, 1 + (1 * 4 + 1) * 3 + 1], enc.pos_embed[0, 1 + (1 * 2 + 1) * 2 + 1])
    assert torch.equal(resize_pos_embed(enc.pos_embed.data, enc.grid, enc.grid), enc.pos_embed.data)


def test_learned_pos_embed_is_interpolated():
    learned = torch.randn(1, 1 + 8, 48)
    same = resize_pos_embed(learned, (2, 2, 2), (2, 2, 2))
    assert torch.equal(same, learned)
    big = resize_pos_embed(learned, (2, 2, 2), (2, 4, 4))
    assert big.shape == (1, 1 + 32, 48) and torch.equal(big[:, 0], learned[:, 0])
    # A table constant along y and x stays constant after interpolation.
    const = torch.randn(1, 1, 1, 1, 48).expand(1, 2, 2, 2, 48).reshape(1, 8, 48)
    out = resize_pos_embed(torch.cat([torch.zeros(1, 1, 48), const], 1), (2, 2, 2), (2, 4, 4))
    assert torch.allclose(out[0, 1:], const[0, :1].expand(32, 48), atol=1e-6)


def test_head_output_shape_and_loss_on_a_known_batch():
    enc = set_token_grid(ViT3D(**TINY_ENCODER), (2, 4, 3))
    model = Classifier(enc, num_classes=5)
    x = torch.rand(3, 1, 16, 32, 24)
    assert model(x).shape == (3, 5)
    with torch.no_grad():  # logits = bias exactly: BCE = mean(softplus(b) - y b)
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    y = torch.tensor([[1, 0, 1, 0, 1], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
    loss = torch.nn.BCEWithLogitsLoss()(model(x), y)
    b = model.head.bias.detach()
    expected = (torch.nn.functional.softplus(b) - y * b).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # By hand: sum of y*b over the batch is 0 + 3 - 3 = 0, so loss = 3 * sum(softplus(b)) / 15
    # = (0.12693 + 0.31326 + 0.69315 + 1.31326 + 2.12693) / 5 = 0.91471.
    assert loss.item() == pytest.approx(0.91471, abs=1e-4)


def test_volume_size_must_be_a_multiple_of_the_patch(tmp_path):
    ckpt = _pretrain_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(UserError, match="multiple"):
        build_classifier(num_classes=3, size_zyx=(16, 20, 16), pretrained=ckpt)


# --- metrics ----------------------------------------------------------------------------------------

def _scores(n=60, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random((n, k)) < 0.35
    s = np.round(y * rng.uniform(0, 1.2, (n, k)) + rng.random((n, k)), 1)  # rounding makes ties
    return y.astype(int), s


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    y, s = _scores()
    ours = metrics.auroc(y, s)
    for k in range(y.shape[1]):
        assert ours[k] == pytest.approx(roc_auc_score(y[:, k], s[:, k]), abs=1e-12)
    y[:, 2] = 0
    assert np.isnan(metrics.auroc(y, s)[2])
    assert metrics.macro(metrics.auroc(y, s)) == pytest.approx(np.mean([roc_auc_score(y[:, k], s[:, k]) for k in (0, 1, 3)]))


def test_bootstrap_interval_matches_a_sklearn_loop():
    from sklearn.metrics import roc_auc_score

    y, s = _scores(n=40, k=3, seed=1)
    boot = metrics.bootstrap_auroc(y, s, n_boot=200, seed=7)
    idx = np.random.default_rng(7).integers(0, 40, size=(200, 40))  # the same draws: cases with replacement
    per = np.full((200, 3), np.nan)
    for b, i in enumerate(idx):
        for k in range(3):
            if 0 < y[i, k].sum() < 40:
                per[b, k] = roc_auc_score(y[i, k], s[i, k])
    for k in range(3):
        ref = np.percentile(per[np.isfinite(per[:, k]), k], [2.5, 97.5])
        assert boot["per_class"][k] == pytest.approx(list(ref), abs=1e-12)
    ref_macro = np.percentile(np.nanmean(per, axis=1), [2.5, 97.5])
    assert boot["macro"] == pytest.approx(list(ref_macro), abs=1e-12)
    point = metrics.macro(metrics.auroc(y, s))
    assert boot["macro"][0] < point < boot["macro"][1]


def test_thresholds_come_from_another_set(tmp_path):
    from medgmae_trainers.classification.evaluate import evaluate, write_predictions
    from preprocessing.layouts.classification import LabelTable

    y, s = _scores(n=40, k=2, seed=2)
    cases = [f"c{i}" for i in range(40)]
    table = LabelTable(["a", "b"], cases, ["train"] * 20 + ["valid"] * 20, y.astype(np.uint8))
    write_predictions(tmp_path / "train.csv", cases[:20], ["a", "b"], s[:20])
    write_predictions(tmp_path / "valid.csv", cases[20:], ["a", "b"], s[20:])
    res = evaluate(tmp_path / "valid.csv", table, tmp_path / "ev", n_boot=50, thresholds_from=tmp_path / "train.csv")
    thr = metrics.youden_thresholds(y[:20], s[:20])
    assert res["thresholds"]["per_class"]["a"]["threshold"] == pytest.approx(thr[0], abs=1e-6)
    assert (tmp_path / "ev" / "roc_curves.png").stat().st_size > 10_000
    assert "Macro AUROC" in (tmp_path / "ev" / "evaluation.md").read_text()
    with pytest.raises(UserError, match="another set"):
        evaluate(tmp_path / "valid.csv", table, tmp_path / "ev2", n_boot=10, thresholds_from=tmp_path / "valid.csv")


# --- data -------------------------------------------------------------------------------------------

def test_fraction_subsets_are_nested_and_fixed():
    cases = [f"case{i:03d}" for i in range(50)]
    f01, f02, f1 = (fraction_subset(cases, f) for f in (0.1, 0.2, 1.0))
    assert len(f01) == 5 and len(f02) == 10 and f1 == sorted(cases)
    assert set(f01) <= set(f02) <= set(f1)
    assert fraction_subset(list(reversed(cases)), 0.1) == f01
    assert len(fraction_subset(cases[:3], 0.01)) == 1


def test_preprocessing_resamples_windows_and_crops(tmp_path):
    hu = np.full((20, 40, 30), -1000, np.int16)  # z, y, x at 3 x 1 x 1.5 mm
    hu[5:15, 10:30, 5:25] = 500
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((1.5, 1.0, 3.0))
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))  # flipped x is reoriented to LPS
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    g = Geometry(spacing_zyx=(6.0, 2.0, 3.0), size_zyx=(8, 16, 24), hu_window=(-1000.0, 1000.0))
    arr, rec = preprocess_image(Source(str(tmp_path / "a.nii.gz")), g)
    assert arr.shape == (8, 16, 24) and arr.dtype == np.float16
    assert rec["resampled_shape_zyx"] == [10, 20, 15]
    assert float(arr.max()) == pytest.approx(0.75, abs=1e-3)  # 500 HU in [-1000, 1000]
    assert float(arr[:, :, :3].max()) == 0  # x padded with air (15 -> 24 columns)
    inside = arr > 0.5
    assert 400 < inside.sum() < 800  # the box's 30 x 20 x 15 mm -> about 5 x 10 x 10 target voxels
    assert np.array_equal(crop_or_pad(np.arange(10.0)[:, None, None] * np.ones((10, 2, 2)), (4, 2, 2))[:, 0, 0],
                          [3, 4, 5, 6])


def test_preprocessing_windows_with_the_one_window_formula(tmp_path):
    """Classification's own --hu-window goes through medgmae_plans.constants.window_hu, not a copy of it."""
    from medgmae_plans import constants
    from medgmae_trainers.classification import data

    assert data.window_hu is constants.window_hu and not hasattr(data, "window")
    hu = np.linspace(-1200, 1200, 6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10)
    img = sitk.GetImageFromArray(hu)
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    g = Geometry(spacing_zyx=(1.0, 1.0, 1.0), size_zyx=(6, 8, 10), hu_window=(-1000.0, 1000.0))
    arr, _ = preprocess_image(Source(str(tmp_path / "a.nii.gz")), g)
    np.testing.assert_array_equal(arr, constants.window_hu(hu, g.hu_window).astype(np.float16))


def test_bad_labels_csv_is_one_clear_error(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("case,split,a\nx,train,2\n")
    with pytest.raises(UserError, match="0 or 1"):
        read_labels(bad)
    bad.write_text("case,split,a\nx,test,1\n")
    with pytest.raises(UserError, match="split"):
        read_labels(bad)


# --- CT-RATE converter ------------------------------------------------------------------------------

CLASSES = ["Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
           "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
           "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
           "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
           "Interlobular septal thickening"]


def _fabricate_ctrate(root: Path) -> None:
    """train_1_a_1 stores raw values (HU + 1024, intercept -1024, header spacing wrong); train_2_a_1 and
    valid_1_a_1 are already HU; train_3_a_1 is listed but not downloaded."""
    ds = root / "dataset"
    vols = {"train_1_a_1": (1024, "[0.75, 0.75]", 1.5), "train_2_a_1": (0, "[0.8, 0.8]", 2.0),
            "valid_1_a_1": (0, "[0.7, 0.7]", 1.0)}
    for name, (offset, _, _) in vols.items():
        split, pid, scan, _ = name.split("_")
        folder = ds / ("train" if split == "train" else "valid") / f"{split}_{pid}" / f"{split}_{pid}_{scan}"
        folder.mkdir(parents=True)
        hu = np.full((12, 24, 24), -1000, np.int16)
        hu[3:9, 6:18, 6:18] = 40
        sitk.WriteImage(sitk.GetImageFromArray((hu + offset).astype(np.int16)), str(folder / f"{name}.nii.gz"))
    (ds / "metadata").mkdir()
    (ds / "multi_abnormality_labels").mkdir()
    for split, meta_name, names in (("train", "train_metadata.csv", ["train_1_a_1", "train_2_a_1", "train_3_a_1"]),
                                    ("valid", "validation_metadata.csv", ["valid_1_a_1"])):
        with open(ds / "metadata" / meta_name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["VolumeName", "Manufacturer", "XYSpacing", "ZSpacing", "RescaleIntercept", "RescaleSlope"])
            for n in names:
                xy, z = vols.get(n, (0, "[0.75, 0.75]", 1.5))[1:]
                w.writerow([f"{n}.nii.gz", "X", xy, z, -1024, 1])
        with open(ds / "multi_abnormality_labels" / f"{split}_predicted_labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["VolumeName", *CLASSES])
            for i, n in enumerate(names):
                w.writerow([f"{n}.nii.gz", *[(i + k) % 2 for k in range(18)]])


def test_ctrate_converter_on_a_fabricated_copy(tmp_path, nnunet_env):
    _fabricate_ctrate(tmp_path / "CT-RATE")
    assert classify(["convert", str(tmp_path / "CT-RATE"), "--no-pbar"]) == 0
    out = nnunet_env["nnUNet_raw"] / "Dataset992_CTRATE"
    table = read_labels(out / "classification_labels.csv")
    assert table.classes == CLASSES
    assert table.cases == ["train_1_a_1", "train_2_a_1", "valid_1_a_1"] and table.splits == ["train", "train", "valid"]
    assert table.labels[1].tolist() == [(1 + k) % 2 for k in range(18)]
    conv = json.loads((out / "conversion.json").read_text())
    assert conv["missing_volumes"]["train"] == ["train_3_a_1.nii.gz"]
    from medgmae_trainers.classification.data import read_sources

    src = read_sources(out, table.cases)
    assert src["train_1_a_1"].spacing_xyz == (0.75, 0.75, 1.5) and src["train_1_a_1"].intercept == -1024
    g = Geometry(spacing_zyx=(3.0, 1.5, 1.5), size_zyx=(8, 16, 16))
    for case in table.cases:  # stored values and HU files both come out as HU: box 40 HU, air -1000
        arr, rec = preprocess_image(src[case], g)
        assert rec["rescaled"] == (case == "train_1_a_1")
        assert float(arr.max()) == pytest.approx(0.52, abs=2e-3) and float(arr.min()) == 0
    assert classify(["convert", str(tmp_path / "CT-RATE")]) == 2  # exists: refused without --overwrite


def test_converter_refuses_another_layout(tmp_path, nnunet_env, capsys):
    (tmp_path / "nothing").mkdir()
    assert classify(["convert", str(tmp_path / "nothing")]) == 2
    assert "multi_abnormality_labels" in capsys.readouterr().err


# --- the command, end to end on a tiny findings phantom ---------------------------------------------

@pytest.fixture(scope="module")
def findings_env(tmp_path_factory):
    from preprocessing.phantom import generate_dataset

    root = tmp_path_factory.mktemp("cls")
    env = nnunet_folders(root)
    generate_dataset(env["nnUNet_raw"], n_train=4, n_test=2, dataset_id=991, findings=0.5, spacing_scale=4.0,
                     workers=1, pbar=False, log=lambda *_: None)
    env["ckpt"] = _pretrain_checkpoint(root / "pretrained.pt")
    return env


GEOMETRY = ["--spacing-xyz", "12", "12", "16", "--size-xyz", "32", "32", "16"]


def _train(env, monkeypatch, out, *extra):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(env[k]))
    return classify(["train", "991", "--pretrained", str(env["ckpt"]), "--batch-size", "2", "--bootstrap", "50",
                     "--out", str(out), "--no-pbar", "--device", "cpu", *GEOMETRY, *extra])


def test_train_predict_evaluate_and_exact_resume(findings_env, monkeypatch, tmp_path):
    env = findings_env
    assert _train(env, monkeypatch, tmp_path / "straight", "--epochs", "2") == 0
    run = tmp_path / "straight"
    for name in ("checkpoint_final.pt", "checkpoint_latest.pt", "train.log", "train.json", "metrics.jsonl",
                 "training_curves.png", "valid/predictions.csv", "valid/evaluation.json", "valid/roc_curves.png"):
        assert (run / name).exists(), name
    pre = env["nnUNet_preprocessed"] / "Dataset991_PhantomFindings"
    (folder,) = pre.iterdir()
    assert np.load(next(folder.glob("*.npy")), mmap_mode="r").shape == (16, 32, 32)
    # Interrupted (Ctrl-C) right after epoch 1 was saved, then resumed: the uninterrupted run's weights.
    from medgmae_trainers.run import session

    real_save = session.save_torch_atomic  # the run core writes checkpoint_latest.pt

    def save_then_interrupt(obj, path):
        real_save(obj, path)
        if obj.get("epoch") == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(session, "save_torch_atomic", save_then_interrupt)
        assert _train(env, monkeypatch, tmp_path / "resumed", "--epochs", "2") == 130
    assert _train(env, monkeypatch, tmp_path / "resumed", "--epochs", "2") == 2  # refuses to overwrite
    assert _train(env, monkeypatch, tmp_path / "resumed", "--epochs", "3", "--resume") == 2  # other settings
    assert _train(env, monkeypatch, tmp_path / "resumed", "--epochs", "2", "--resume") == 0
    a = torch.load(run / "checkpoint_final.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint_final.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 2

    assert classify(["predict", "991", "--model", str(run), "--split", "train", "--no-pbar", "--device", "cpu"]) == 0
    rows = list(csv.reader(open(run / "train" / "predictions.csv")))
    assert len(rows) == 1 + 4 and len(rows[0]) == 1 + 8
    assert all(0 < float(v) < 1 for r in rows[1:] for v in r[1:])
    labels = env["nnUNet_raw"] / "Dataset991_PhantomFindings" / "classification_labels.csv"
    assert classify(["evaluate", str(run / "valid" / "predictions.csv"), "--labels", str(labels), "--bootstrap", "20",
                     "--thresholds-from", str(run / "train" / "predictions.csv"), "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert ev["num_cases"] == 2 and set(ev["auroc"]) == set(rows[0][1:]) and "thresholds" in ev


def test_missing_checkpoint_is_one_line(findings_env, monkeypatch, tmp_path, capsys):
    env = dict(findings_env, ckpt=tmp_path / "nope.pt")
    assert _train(env, monkeypatch, tmp_path / "run", "--epochs", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt" in err[0]
