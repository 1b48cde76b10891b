"""`medgmae_evaluate RESULTS_FOLDER --compare` on fabricated nnU-Net results folders of fine-tuning runs."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from evaluate_support import DATASET, make_gt, make_run, perturb, reference_case, write_label_map
from evaluation.cli import main
from evaluation.compare import Cell, ranks
from evaluation.display import fraction_display
from evaluation.folders import Run

CASES = {f"phantom_{i:03d}": reference_case(i, with_kidney=i != 2) for i in range(3)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def predictions(seed: int, amount: float) -> dict[str, np.ndarray]:
    return {case: perturb(ref, seed + i, amount) for i, (case, ref) in enumerate(CASES.items())}


@pytest.fixture
def results(nnunet_env):
    """Scratch 10% (two folds), MedGMAE 10%, voxel-MAE 100%, MedGMAE* 1%; references and raw CT."""
    make_gt(nnunet_env["nnUNet_preprocessed"], CASES, raw=nnunet_env["nnUNet_raw"])
    root = nnunet_env["nnUNet_results"]
    runs = {
        ("scratch", 0.1, 0): make_run(root, "scratch", 0.1, 0, predictions(0, 0.10)),
        ("scratch", 0.1, 1): make_run(root, "scratch", 0.1, 1, predictions(10, 0.12)),
        ("medgmae", 0.1, 0): make_run(root, "medgmae", 0.1, 0, predictions(20, 0.02)),
        ("voxelmae", 1.0, 0): make_run(root, "voxelmae", 1.0, 0, predictions(30, 0.04)),
        ("medgmaestar", 0.01, 0): make_run(root, "medgmaestar", 0.01, 0, predictions(40, 0.15)),
    }
    # nnU-Net's own validation summary must never be overwritten
    (runs[("medgmae", 0.1, 0)] / "validation" / "summary.json").write_text('{"nnunet": true}')
    return root, runs


def run(argv, capsys):
    code = main([*map(str, argv), "--no-pbar"])
    return code, capsys.readouterr().err


def fg_dice(fold_dir) -> float:
    return json.loads((fold_dir / "validation" / "summary_medgmae.json").read_text())["foreground_mean"]["Dice"]


def test_compare_writes_table1(results, tmp_path, capsys):
    root, runs = results
    out = tmp_path / "report"
    code, err = run([root / DATASET, "--compare", "-o", out, "--overlays", "1"], capsys)
    assert code == 0, err
    assert json.loads((runs[("medgmae", 0.1, 0)] / "validation" / "summary.json").read_text()) == {"nnunet": True}

    rows = list(csv.reader((out / "table1.csv").open()))
    assert rows[0] == ["init", "Phantom 1%", "Phantom 10%", "Phantom 100%"]
    assert [r[0] for r in rows[1:]] == ["Scratch", "voxel-MAE", "MedGMAE", "MedGMAE*"]  # the paper's order
    table = {r[0]: r[1:] for r in rows[1:]}
    scratch = np.mean([fg_dice(runs[("scratch", 0.1, f)]) for f in (0, 1)])  # folds averaged
    assert table["Scratch"] == ["", f"{100 * scratch:.2f}", ""]
    assert table["MedGMAE"][1] == f"{100 * fg_dice(runs[('medgmae', 0.1, 0)]):.2f}"
    assert table["voxel-MAE"] == ["", "", f"{100 * fg_dice(runs[('voxelmae', 1.0, 0)]):.2f}"]
    assert table["MedGMAE*"][0] != "" and table["MedGMAE*"][1:] == ["", ""]

    markdown = (out / "table1.md").read_text()
    medgmae_row = next(line for line in markdown.splitlines() if line.startswith("| MedGMAE |"))
    scratch_row = next(line for line in markdown.splitlines() if line.startswith("| Scratch |"))
    assert f"**{table['MedGMAE'][1]}**" in medgmae_row          # less noise: best at 10%
    assert f"<u>{table['Scratch'][1]}</u>" in scratch_row        # second at 10%
    assert scratch_row.count("—") == 2
    assert "Mean NSD at 1 mm" in markdown
    assert not any("±" in line for line in markdown.splitlines() if line.startswith("|"))  # one replicate a cell
    versus = list(csv.DictReader((out / "versus_scratch.csv").open()))
    assert [(v["init"], v["fraction"], v["replicates"], v["cases"]) for v in versus] == [("MedGMAE", "0.1", "1", "3")]
    assert "MedGMAE minus Scratch at Phantom 10%" in markdown

    organs = list(csv.DictReader((out / "per_organ.csv").open()))
    assert len(organs) == 4 * 3  # four (init, fraction) groups x three organs
    assert {o["organ"] for o in organs} == {"spleen", "liver", "kidney"}
    assert all(o["folds"] == ("2" if o["init"] == "Scratch" else "1") for o in organs)
    assert "1 spleen" in (out / "per_organ.md").read_text()

    pngs = ["table1.png"] + [f"overlays_MedGMAETrainer_{t}.png" for t in
                             ("scratch_f10", "medgmae_f10", "voxelmae_f100", "medgmaestar_f1")]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
    record = json.loads((out / "medgmae_evaluate.json").read_text())
    assert len(record["results"]["runs"]) == 5 and record["results"]["skipped"] == []
    assert "MedGMAE*" in (out / "medgmae_evaluate.log").read_text()


def test_second_run_reuses_summaries(results, tmp_path, capsys):
    root, runs = results
    fold = runs[("scratch", 0.1, 0)]
    assert run(["Phantom", "-o", tmp_path / "a"], capsys)[0] == 0  # an alias names the dataset folder
    summary = fold / "validation" / "summary_medgmae.json"
    stamp = summary.stat().st_mtime_ns
    code, err = run([fold, "-o", tmp_path / "b"], capsys)
    assert code == 0 and "reused" in err and summary.stat().st_mtime_ns == stamp
    # a changed prediction, another tolerance or --force: computed again
    code, err = run([fold, "-o", tmp_path / "b", "--tolerance", "2"], capsys)
    assert code == 0 and "reused" not in err
    assert json.loads(summary.read_text())["medgmae"]["nsd_tolerance_mm"] == 2.0
    before = fg_dice(fold)
    write_label_map(fold / "validation" / "phantom_000.nii.gz", CASES["phantom_000"])  # now perfect
    code, err = run([fold, "-o", tmp_path / "b", "--tolerance", "2"], capsys)
    assert code == 0 and "reused" not in err and fg_dice(fold) > before
    stamp = summary.stat().st_mtime_ns
    code, err = run([fold, "-o", tmp_path / "b", "--tolerance", "2", "--force"], capsys)
    assert code == 0 and "reused" not in err and summary.stat().st_mtime_ns != stamp


def test_unfinished_run_is_skipped(results, tmp_path, capsys):
    root, _ = results
    make_run(root, "medgmae", 1.0, 0, predictions(50, 0.01), finished=False)
    failed = make_run(root, "voxelmae", 0.1, 0, predictions(60, 0.01))  # validation there, but it failed
    meta = json.loads((failed / "medgmae_finetune.json").read_text())
    (failed / "medgmae_finetune.json").write_text(json.dumps({**meta, "status": "failed"}))
    code, err = run([root, "-o", tmp_path / "o"], capsys)
    assert code == 0 and "no validation/ folder yet" in err and "status 'failed'" in err
    record = json.loads((tmp_path / "o" / "medgmae_evaluate.json").read_text())["results"]
    assert len(record["skipped"]) == 2 and len(record["runs"]) == 5
    code, err = run([failed, "-o", tmp_path / "o"], capsys)
    assert code == 2 and "no run has validation predictions" in err


def test_unrecorded_validation_cases_use_the_predictions(results, tmp_path, capsys):
    _, runs = results
    fold = runs[("medgmae", 0.1, 0)]
    meta = json.loads((fold / "medgmae_finetune.json").read_text())
    (fold / "medgmae_finetune.json").write_text(json.dumps({**meta, "val_cases": [], "status": "finished"}))
    code, err = run([fold, "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    assert json.loads((fold / "validation" / "summary_medgmae.json").read_text())["medgmae"]["num_cases"] == 3


def _refused(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if "error:" in line] == lines[-1:], err
    for fragment in fragments:
        assert fragment in lines[-1], err


def test_missing_and_extra_validation_cases(results, tmp_path, capsys):
    _, runs = results
    fold = runs[("medgmae", 0.1, 0)]
    (fold / "validation" / "phantom_001.nii.gz").unlink()
    _refused(*run([fold, "-o", tmp_path / "o"], capsys), "phantom_001", "no prediction")
    fold = runs[("voxelmae", 1.0, 0)]
    (fold / "validation" / "phantom_999.nii.gz").write_bytes((fold / "validation" / "phantom_000.nii.gz").read_bytes())
    _refused(*run([fold, "-o", tmp_path / "o"], capsys), "phantom_999", "not the run's to evaluate")


def test_bad_run_metadata_and_folders(results, nnunet_env, tmp_path, capsys):
    root, runs = results
    _refused(*run([tmp_path / "nowhere"], capsys), "nowhere")
    _refused(*run([nnunet_env["nnUNet_raw"]], capsys), "no fine-tuning run")
    meta = runs[("scratch", 0.1, 1)] / "medgmae_finetune.json"
    meta.write_text(json.dumps({"dataset": DATASET, "fold": 1}))
    _refused(*run([meta.parent], capsys), "medgmae_finetune.json", "init")
    meta.write_text("{truncated")
    _refused(*run([meta.parent], capsys), "medgmae_finetune.json", "cannot read")
    gt = nnunet_env["nnUNet_preprocessed"] / DATASET / "gt_segmentations"
    gt.rename(gt.with_name("moved"))
    _refused(*run([runs[("medgmae", 0.1, 0)]], capsys), "gt_segmentations", "does not exist")


def test_ranks_and_fraction_names():
    assert ranks([0.5, 0.7, float("nan"), 0.6]) == [None, 1, None, 2]
    assert ranks([0.7, 0.7, 0.6]) == [1, 1, 2]  # ties share the mark
    assert ranks([0.4]) == [1]
    assert ranks([0.0062, 0.0055, 0.0130]) == [2, None, 1]  # 0.62 %, 0.55 %, 1.30 % are not a tie
    assert [fraction_display(f) for f in (0.01, 0.1, 1.0, 0.025)] == ["1%", "10%", "100%", "2.5%"]


def case_dice_of(fold_dir) -> dict[str, float]:
    """Per case, Dice averaged over the organs present, from the run's summary."""
    summary = json.loads((fold_dir / "validation" / "summary_medgmae.json").read_text())
    return {c["reference_file"]: np.nanmean([m["Dice"] for m in c["metrics"].values()])
            for c in summary["metric_per_case"]}


@pytest.fixture
def replicated(nnunet_env):
    """At 10%: scratch and MedGMAE with replicates r0, r1, r2; voxel-MAE's three replicates predict
    exactly what scratch's do (a difference of exactly 0)."""
    make_gt(nnunet_env["nnUNet_preprocessed"], CASES, raw=nnunet_env["nnUNet_raw"])
    root = nnunet_env["nnUNet_results"]
    runs = {}
    for r in range(3):
        scratch = predictions(100 + 10 * r, 0.10 + 0.02 * r)
        runs[("scratch", r)] = make_run(root, "scratch", 0.1, 0, scratch, tag=f"r{r}")
        runs[("voxelmae", r)] = make_run(root, "voxelmae", 0.1, 0, scratch, tag=f"r{r}")
        runs[("medgmae", r)] = make_run(root, "medgmae", 0.1, 0, predictions(200 + 10 * r, 0.02), tag=f"r{r}")
    return root, runs


def test_replicates_give_mean_sd_and_paired_intervals(replicated, tmp_path, capsys):
    root, runs = replicated
    out = tmp_path / "report"
    code, err = run([root, "--compare", "--no-nsd", "--overlays", "0", "-o", out], capsys)
    assert code == 0, err
    per_replicate = {init: [fg_dice(runs[(init, r)]) for r in range(3)] for init in ("scratch", "medgmae")}
    rows = {r[0]: r[1:] for r in csv.reader((out / "table1.csv").open())}
    assert rows["Scratch"] == [f"{100 * np.mean(per_replicate['scratch']):.2f}"]
    scratch_row = next(line for line in (out / "table1.md").read_text().splitlines() if line.startswith("| Scratch |"))
    assert (f"{100 * np.mean(per_replicate['scratch']):.2f} ± {100 * np.std(per_replicate['scratch'], ddof=1):.2f}"
            in scratch_row)  # the sample sd over replicates
    replicates = list(csv.DictReader((out / "replicates.csv").open()))
    assert [(r["init"], r["replicate"]) for r in replicates if r["init"] == "MedGMAE"] == [
        ("MedGMAE", "r0"), ("MedGMAE", "r1"), ("MedGMAE", "r2")]
    assert [float(r["dice_pct"]) for r in replicates if r["init"] == "Scratch"] == pytest.approx(
        [100 * d for d in per_replicate["scratch"]], abs=0.006)

    # MedGMAE's difference: per case, its three replicates' mean minus scratch's; then the mean over cases
    medgmae = np.mean([list(case_dice_of(runs[("medgmae", r)]).values()) for r in range(3)], axis=0)
    scratch = np.mean([list(case_dice_of(runs[("scratch", r)]).values()) for r in range(3)], axis=0)
    versus = {v["init"]: v for v in csv.DictReader((out / "versus_scratch.csv").open())}
    assert float(versus["MedGMAE"]["difference_pct"]) == pytest.approx(100 * np.mean(medgmae - scratch), abs=0.006)
    assert versus["MedGMAE"]["excludes_zero"] == "1" and float(versus["MedGMAE"]["low_pct"]) > 0
    assert (versus["MedGMAE"]["replicates"], versus["MedGMAE"]["scratch_replicates"]) == ("3", "3")
    assert [versus["voxel-MAE"][k] for k in ("difference_pct", "low_pct", "high_pct", "excludes_zero")] == [
        "0.00", "0.00", "0.00", "0"]

    for text in (err, (out / "table1.md").read_text()):  # printed, and in the report, in words
        assert "MedGMAE minus Scratch at Phantom 10%" in text and "excludes 0, MedGMAE is better" in text
        assert "voxel-MAE minus Scratch at Phantom 10%: +0.00" in text and "contains 0, no difference" in text
        assert "Intervals that exclude 0: MedGMAE at Phantom 10%." in text
    record = json.loads((out / "medgmae_evaluate.json").read_text())["results"]["versus_scratch"]
    assert [(v["init"], v["interval"]["excludes_zero"]) for v in record] == [("voxelmae", False), ("medgmae", True)]


def test_an_untagged_run_is_replicate_r0(replicated, tmp_path, capsys):
    root, _ = replicated
    make_run(root, "medgmae", 0.1, 0, predictions(300, 0.02))  # untagged: a second r0 of fold 0
    code, err = run([root, "--compare", "--no-nsd", "--overlays", "0", "-o", tmp_path / "o"], capsys)
    _refused(code, err, "MedGMAETrainer_medgmae_f10_r0", "MedGMAETrainer_medgmae_f10__", "both replicate r0")


def test_replicate_is_the_trainer_tag(tmp_path):
    def replicate(trainer):
        return Run(tmp_path, {"trainer": trainer, "dataset": DATASET, "init": "medgmae", "fraction": 0.1})

    assert replicate("MedGMAETrainer_medgmae_f10").tag is None
    assert replicate("MedGMAETrainer_medgmae_f10").replicate == "r0"
    assert replicate("MedGMAETrainer_medgmae_f2p5_r12").replicate == "r12"


def test_a_cell_averages_folds_then_replicates():
    """r0 has two folds, r1 one: the cell is the mean of the replicates' means, not of the three runs."""
    cell = Cell(runs=["a", "b", "c"], folds=["0", "1", "0"], replicates=["r0", "r0", "r1"],
                dice=[0.2, 0.4, 0.9], nsd=[0.1, 0.1, 0.1],
                case_dice=[{"x": 0.1, "y": 0.5}, {"x": 0.3}, {"x": 0.6, "z": 0.2}])
    assert cell.replicate_means("dice") == pytest.approx({"r0": 0.3, "r1": 0.9})
    assert cell.mean("dice") == pytest.approx(0.6)  # the three runs' mean would be 0.5
    assert cell.sd("dice") == pytest.approx(np.std([0.3, 0.9], ddof=1))
    cases, matrix = cell.case_matrix()
    assert cases == ["x"]  # y and z were not scored by every replicate
    assert matrix.shape == (2, 1) and matrix[:, 0] == pytest.approx([0.2, 0.6])  # x: r0's two folds averaged
    assert np.isnan(Cell(runs=["a"], folds=["0"], replicates=["r0"], dice=[0.5], nsd=[0.5]).sd("dice"))


def _cell(per_replicate: dict[str, float], cases: int = 10) -> Cell:
    """One fold per replicate, every case at the replicate's Dice."""
    tags = list(per_replicate)
    return Cell(runs=tags, folds=["0"] * len(tags), replicates=tags, dice=list(per_replicate.values()),
                nsd=[0.0] * len(tags),
                case_dice=[{f"c{k}": d for k in range(cases)} for d in per_replicate.values()])


def test_a_lead_carried_by_one_replicate_is_said_so():
    """Cases agree exactly, so the case interval excludes 0 in both comparisons; only the replicate
    pairs tell a lead of every seed pair from one carried by a single seed pair."""
    from types import SimpleNamespace

    from evaluation.intervals import in_words, intervals_csv, versus_scratch

    column = (DATASET, 0.1)
    scratch = {"r0": 0.50, "r1": 0.50, "r2": 0.50}
    comp = SimpleNamespace(columns=[column], rows=["scratch", "voxelmae", "medgmae"], cells={
        ("scratch", *column): _cell(scratch),
        ("voxelmae", *column): _cell({"r0": 0.60, "r1": 0.55, "r2": 0.52}),  # every pair ahead
        ("medgmae", *column): _cell({"r0": 0.90, "r1": 0.52, "r2": 0.45}),  # r0 carries it, r2 behind
    })
    voxel, medgmae = versus_scratch(comp)
    assert voxel.by_replicate == pytest.approx((0.10, 0.05, 0.02)) and voxel.replicates_agree
    assert medgmae.by_replicate == pytest.approx((0.40, 0.02, -0.05)) and not medgmae.replicates_agree
    assert medgmae.interval.excludes_zero and medgmae.interval.difference == pytest.approx(0.37 / 3)

    words = "\n".join(in_words([voxel, medgmae]))
    assert "replicate by replicate +10.00, +5.00, +2.00): the interval excludes 0, voxel-MAE is better." in words
    assert "replicate by replicate +40.00, +2.00, -5.00): the interval excludes 0, MedGMAE is better on these " \
           "cases, but not in every replicate" in words
    assert words.endswith("Intervals that exclude 0: voxel-MAE at Phantom 10%, MedGMAE at Phantom 10% "
                          "(not in every replicate).")
    rows = {r["init"]: r for r in csv.DictReader(intervals_csv([voxel, medgmae]).splitlines())}
    assert rows["MedGMAE"]["by_replicate_pct"] == "40.00 2.00 -5.00"

    # one replicate each (the 100 % column): nothing to pair, no caveat
    comp.cells = {k: _cell({"r0": v.dice[0]}) for k, v in comp.cells.items()}
    single = versus_scratch(comp)[1]
    assert single.by_replicate == () and single.replicates_agree
    assert in_words([single])[0].endswith("MedGMAE is better (one replicate: the seeds' spread is not measured).")
