"""benchmarks.transfer's analysis on fabricated run outputs: the endpoint, the gates and the verdicts
come out as the docstring's rules say, and the report is written (nothing is trained here)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import transfer
from benchmarks.transfer import analysis, report
from benchmarks.transfer.steps import DECODERS, PROBE_FRACTIONS, checkpoints_of, probe_json, trainer_of
from evaluation.summary import organ_mean
from preprocessing.labels import ENDPOINT_ORGANS

CASES = [f"phantom_ts{i:03d}" for i in range(10)]
OTHER = ("gall bladder", "esophagus")  # outside the endpoint: in the 15-organ mean only


def per_case(level: float, rng) -> dict:
    """{case: {organ: Dice}} around `level`; the gall bladder is absent (NaN) from case 0."""
    out = {}
    for i, case in enumerate(CASES):
        dice = {o: float(np.clip(level + rng.normal(0, 0.01), 0, 1)) for o in (*ENDPOINT_ORGANS, *OTHER)}
        dice["gall bladder"] = None if i == 0 else dice["gall bladder"]
        out[case] = dice
    return out


def write_probe(path, level, raw_level, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"per_case": per_case(level, rng),
                                "baselines": {"raw": {"per_case": per_case(raw_level, rng)}}}))


def write_finetune(root, trainer, level, rng):
    labels = {str(i + 1): name for i, name in enumerate((*ENDPOINT_ORGANS, *OTHER))}
    cases = per_case(level, rng)
    summary = root / "preds" / trainer / "summary_medgmae.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"medgmae": {"labels": labels}, "metric_per_case": [
        {"reference_file": f"/x/labelsTs/{case}.nii.gz",
         "metrics": {k: {"Dice": math.nan if dice[name] is None else dice[name]} for k, name in labels.items()}}
        for case, dice in cases.items()]}))
    run = root / "report" / "runs" / trainer / "medgmae_evaluate.json"
    run.parent.mkdir(parents=True, exist_ok=True)
    run.write_text(json.dumps({"results": {"runs": [{"summary": str(summary)}]}}))


def fabricate(tmp_path, *, probe_lead=0.0, ft_lead=0.0, voxel_over_random=0.05, full_over_low=0.10):
    """A finished experiment's outputs at the default budget: MedGMAE leads voxel-MAE by the given
    Dice fractions (probe, fine-tuning), voxel-MAE's probe beats the random init by `voxel_over_random`."""
    args = transfer.parse_args(["--root", str(tmp_path)])
    rng = np.random.default_rng(0)
    for k in range(args.seeds):
        seed = 41 + k
        final = checkpoints_of(args.root, "gaussian", seed, (), args.pretrain_steps)[args.pretrain_steps]
        for f in PROBE_FRACTIONS:
            write_probe(probe_json(args.root, "random", seed, final, f, True), 0.30, 0.05, rng)
            for decoder in DECODERS.values():
                lead = voxel_over_random + (probe_lead if decoder == "gaussian" else 0.0)
                for ckpt in checkpoints_of(args.root, decoder, seed, args.keep_steps, args.pretrain_steps).values():
                    write_probe(probe_json(args.root, decoder, seed, ckpt, f, True), 0.30 + lead, 0.05, rng)
    levels = {("scratch", 0.1): 0.40, ("voxelmae", 0.1): 0.40, ("medgmae", 0.1): 0.40 + ft_lead,
              ("scratch", 1.0): 0.40 + full_over_low, ("nnunet", 0.1): 0.50}
    for (init, fraction), level in levels.items():
        for k in range(args.nnunet_replicates if init == "nnunet" else args.replicates):
            write_finetune(args.root, trainer_of(init, fraction, k), level, rng)
    return args


def test_endpoint_is_the_mean_over_the_eight_organs_that_have_a_dice():
    dice = {o: 0.5 for o in ENDPOINT_ORGANS} | {"liver": 0.9, "pancreas": None, "gall bladder": 0.0}
    assert organ_mean(dice, ENDPOINT_ORGANS) == pytest.approx((0.9 + 0.5 * 6) / 7)
    assert organ_mean(dice) == pytest.approx((0.9 + 0.5 * 6 + 0.0) / 8)
    assert math.isnan(organ_mean({o: None for o in ENDPOINT_ORGANS}, ENDPOINT_ORGANS))


def test_a_clear_lead_in_every_seed_helps(tmp_path):
    result = analysis.analyse(fabricate(tmp_path, probe_lead=0.05, ft_lead=0.05))
    assert result["verdicts"] == {"probe": "helps", "fine-tuning": "helps"}
    c = result["probe"]["MedGMAE - voxel-MAE"]
    assert c.seeds == 5 and c.cases == 10 and c.positive == 5 and c.estimate == pytest.approx(0.05, abs=0.01)
    assert all(ok for _, ok in result["gates"].values())


def test_no_difference_does_not_help_and_a_small_one_is_inconclusive(tmp_path):
    # the probe's pretrained encoders beat the random init by 5 points, MedGMAE no more than voxel-MAE;
    # fine-tuning: every init the same
    assert analysis.analyse(fabricate(tmp_path / "a"))["verdicts"] == {"probe": "helps no more than voxel-MAE",
                                                                       "fine-tuning": "does not help"}
    equal = analysis.analyse(fabricate(tmp_path / "c", voxel_over_random=0.05, full_over_low=0.1))
    assert equal["verdicts"]["fine-tuning"] == "does not help"
    small = analysis.analyse(fabricate(tmp_path / "b", probe_lead=0.015, ft_lead=0.015))["verdicts"]
    # 1.5 points: over 5 seeds the probe's intervals exclude a 2-point lead over voxel-MAE; over 3
    # fine-tuning pairs (t 4.3) they do not, and 1.5 is under the margin: inconclusive
    assert small == {"probe": "helps no more than voxel-MAE", "fine-tuning": "inconclusive"}


def test_failed_gates_make_the_verdicts_uninformative(tmp_path):
    short = analysis.analyse(fabricate(tmp_path / "g1", probe_lead=0.05, ft_lead=0.05, voxel_over_random=0.0))
    assert not short["gates"]["G1 voxel-MAE probe beats random init"][1]
    assert short["verdicts"] == {"probe": "uninformative", "fine-tuning": "uninformative"}
    flat = analysis.analyse(fabricate(tmp_path / "g2", probe_lead=0.05, ft_lead=0.05, full_over_low=0.0))
    assert flat["verdicts"] == {"probe": "helps", "fine-tuning": "uninformative"}


def test_probe_helps_needs_four_of_five_seeds():
    from evaluation.seeds import SeedComparison

    def comp(by_seed):
        return SeedComparison(float(np.mean(by_seed)), tuple(by_seed), 0.03, 0.2, sum(d > 0 for d in by_seed),
                              0.03, 0.2, len(by_seed), 10)

    four = comp([0.1, 0.1, 0.1, 0.1, -0.01])
    three = comp([0.1, 0.1, 0.1, -0.01, -0.01])
    assert analysis.verdict(four, four, True, analysis.PROBE_MAJORITY) == "helps"
    assert analysis.verdict(three, four, True, analysis.PROBE_MAJORITY) == "inconclusive"
    assert analysis.verdict(four, four, True, 1.0) == "inconclusive"  # fine-tuning needs every pair
    assert analysis.verdict(four, four, False, analysis.PROBE_MAJORITY) == "uninformative"


def test_report_states_the_verdicts_gates_and_curves(tmp_path):
    args = fabricate(tmp_path, probe_lead=0.05, ft_lead=0.05)
    result = analysis.analyse(args)
    files = report.write(result, args, args.root / "report", wall_s=123.0)
    text = files["md"].read_text(encoding="utf-8")
    assert "**Verdict: probe — helps; fine-tuning at 10 % — helps.**" in text
    assert "G2 scratch 100 % beats scratch 10 %: passes" in text and "| MedGMAE - scratch |" in text
    assert "| MedGMAE | 1000 |" in text and "| random init | - |" in text and "5 of 5" in text
    record = json.loads(files["json"].read_text())
    assert record["verdicts"]["probe"] == "helps" and len(record["probe"]["MedGMAE - voxel-MAE"]["by_seed"]) == 5
    assert files["png"].stat().st_size > 10_000
