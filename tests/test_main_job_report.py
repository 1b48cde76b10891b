"""The main job's plain report (`evaluation.main_job_report`) on a fake report folder, the endpoint organs,
and the probe steps' order in `run.py demo`."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from evaluation.main_job_report import main
from preprocessing.labels import AMOS_LABELS, ENDPOINT_ORGANS

ROOT = Path(__file__).resolve().parents[1]
ORGANS = [name for name, label in AMOS_LABELS.items() if label]
DATASET = "Dataset990_AbdomenPhantom"
# The main job of 2026-12-07 (docs/results.md): test Dice in %, every organ not named here 0.
FINETUNED = {"Scratch": ({"liver": 71.9}, 4.79),
             "MedGMAE": ({"liver": 75.8, "aorta": 2.6, "postcava": 2.1}, 5.36)}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _probe_json(folder: Path, mean: float, liver: float, cases=("t0", "t1", "t2", "t3")) -> None:
    folder.mkdir(parents=True)
    dice = {o: (liver if o == "liver" else 0.1) for o in ORGANS}
    raw = {o: (0.355 if o == "liver" else 0.0) for o in ORGANS}
    (folder / "probe.json").write_text(json.dumps({
        "scored_on": "test", "cases": list(cases), "dice": dice, "mean_dice": mean,
        "baselines": {"raw": {"dice": raw, "mean_dice": 0.035}}, "settings": {}}), encoding="utf-8")


@pytest.fixture
def report(tmp_path):
    """What medgmae_evaluate --test --compare and the two probes leave in the main job's report folder."""
    organ_rows, replicate_rows = [], []
    for init, (dice, mean) in FINETUNED.items():
        organ_rows += [[DATASET, 0.1, init, AMOS_LABELS[o], o, f"{dice.get(o, 0.0):.2f}", "", 1] for o in ORGANS]
        replicate_rows.append([DATASET, 0.1, init, "r0", 1, f"{mean:.2f}", ""])
    _write_csv(tmp_path / "per_organ.csv", ["dataset", "fraction", "init", "label", "organ", "dice_pct", "nsd_pct",
                                            "folds"], organ_rows)
    _write_csv(tmp_path / "replicates.csv", ["dataset", "fraction", "init", "replicate", "folds", "dice_pct",
                                             "nsd_pct"], replicate_rows)
    _probe_json(tmp_path / "probe_pretrained", 0.108, 0.301)
    _probe_json(tmp_path / "probe_random_init", 0.143, 0.523)
    return tmp_path


def test_report_says_which_organs_each_init_learned_with_the_numbers(report, capsys):
    assert main([str(report)]) == 0
    text = (report / "main_job.md").read_text(encoding="utf-8")
    assert capsys.readouterr().out.strip() == text.strip()
    others = ", ".join(o for o in ORGANS if o != "liver")
    assert (f"**Scratch** learned 1 of 15 organs (test Dice >= 50 %): liver 71.9 %. Not learned: the other 14; "
            f"14 of 15 organs are 0 ({others}).") in text
    zero = ", ".join(o for o in ORGANS if o not in FINETUNED["MedGMAE"][0])
    assert (f"**MedGMAE** learned 1 of 15 organs (test Dice >= 50 %): liver 75.8 %. Not learned: the other 14; "
            f"12 of 15 organs are 0 ({zero}), and aorta 2.6 %, postcava 2.1 %.") in text
    assert "| organs learned (test Dice >= 50 %) | 1 of 15 | 1 of 15 |" in text
    # endpoint: the liver (and MedGMAE's aorta and postcava) over 8 organs; all organs: the table's means
    assert f"| mean Dice over the 8 endpoint organs | {71.9 / 8:.2f} % | {(75.8 + 2.6 + 2.1) / 8:.2f} % |" in text
    assert "| mean Dice over all 15 organs (table1.md) | 4.79 % | 5.36 % |" in text
    assert "Fine-tuning (Phantom 10%)" in text
    assert "Dice on the 4 test cases" in text
    assert f"| pretrained encoder | {(30.1 + 7 * 10) / 8:.2f} % | 10.80 % |" in text
    assert f"| its random init | {(52.3 + 7 * 10) / 8:.2f} % | 14.30 % |" in text
    assert f"| raw intensities (baseline) | {35.5 / 8:.2f} % | 3.50 % |" in text
    assert "features scores 3.5 points below its random init's" in text


def test_an_init_that_learned_nothing_and_an_organ_without_a_dice():
    from evaluation.main_job_report import organ_words

    dice = {"liver": 31.0, "spleen": 0.0, "bladder": float("nan")}
    assert organ_words("Scratch", dice) == ("**Scratch** learned none of 3 organs (test Dice >= 50 %). Not learned: "
                                            "all 3; 1 of 3 organs are 0 (spleen), and liver 31.0 %; without a Dice "
                                            "(in no test case's reference or prediction): bladder.")


def test_report_says_one_seed_is_not_evidence_and_points_to_the_experiment(report, capsys):
    assert main([str(report)]) == 0
    text = " ".join((report / "main_job.md").read_text(encoding="utf-8").split())
    assert "This is one seed and one labelled subset" in text
    assert "A difference between the inits here is not evidence" in text and "spread over seeds is not measured" in text
    assert "`python -m benchmarks.transfer`" in text and "docs/results.md, \"Does MedGMAE pretraining help?\"" in text


def test_report_refuses_what_it_cannot_read_with_one_line(report, capsys):
    (report / "probe_random_init" / "probe.json").unlink()
    assert main([str(report)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "probe_random_init/probe.json" in err and "medgmae_probe" in err
    assert not (report / "main_job.md").exists()

    _probe_json(report / "probe_random_init" / "x", 0.1, 0.5, cases=("t0",))
    (report / "probe_random_init" / "x" / "probe.json").rename(report / "probe_random_init" / "probe.json")
    assert main([str(report)]) == 2
    assert "not comparable" in capsys.readouterr().err

    with open(report / "replicates.csv", "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([DATASET, 0.1, "Scratch", "r1", 1, "5.00", ""])
    assert main([str(report)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Scratch have several replicates" in err


def test_endpoint_organs_are_label_names_every_abdominal_converter_writes():
    from preprocessing.convert import abdomenatlas, btcv, flare22

    assert len(ENDPOINT_ORGANS) == len(set(ENDPOINT_ORGANS)) == 8
    for labels in (AMOS_LABELS, abdomenatlas.LABELS, btcv.LABELS, flare22.LABELS):
        assert set(ENDPOINT_ORGANS) <= set(labels)


def _run_py():
    spec = importlib.util.spec_from_file_location("run_py", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_probes_the_finished_checkpoint_then_reports(tmp_path):
    run = _run_py()
    env = {var: str(tmp_path / var) for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    stages = run.demo_stages(env, [])
    commands = [(i, step) for i, stage in enumerate(stages) for _, steps in stage for step in steps]

    def stage_of(name, *flags):
        found = [i for i, step in commands if Path(step[0]).name == name and all(f in step for f in flags)]
        assert len(found) == 1, (name, flags)
        return found[0]

    checkpoint = str(run.pretrain_folder(env) / "checkpoint_final.pt")
    pretrain = stage_of("medgmae_pretrain")
    probe_pretrained = stage_of("medgmae_probe", str(run.DEMO_ROOT / "report" / "probe_pretrained"))
    probe_random = stage_of("medgmae_probe", "--random-init", str(run.DEMO_ROOT / "report" / "probe_random_init"))
    # stages run one after the other: both probes start after the pretraining's stage has finished
    assert pretrain < probe_pretrained and pretrain < probe_random
    for i, step in commands:
        if Path(step[0]).name == "medgmae_probe":
            assert step[step.index("--checkpoint") + 1] == checkpoint and "--no-pbar" in step
            assert step[step.index("--threads") + 1] == "1"
    # the report reads the evaluation's and the probes' outputs, so it comes after both
    evaluate, report = stage_of("medgmae_evaluate"), stage_of("python", "evaluation.main_job_report")
    assert max(probe_pretrained, probe_random, evaluate) < report == len(stages) - 1
