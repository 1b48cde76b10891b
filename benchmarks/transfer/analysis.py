"""The experiment's answer: the endpoint per (arm, seed, test case), the paired comparisons over seeds,
the gates and the verdicts, exactly as the package docstring fixes them before the run.

An arm is one representation (probe) or one init (fine-tuning) under one budget; its scores are a
[seeds, cases] matrix of per-case endpoints (Dice fractions; the mean over `ENDPOINT_ORGANS` that have
a Dice in that case). Differences are reported in Dice points.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing.labels import ENDPOINT_ORGANS

from evaluation.seeds import SeedComparison, compare_over_seeds, t_interval
from evaluation.summary import organ_mean

from .settings import SEED
from .steps import DECODERS, LOW, PROBE_FRACTIONS, checkpoints_of, probe_json, quality_json, trainer_of

MARGIN = 0.02            # 2 Dice points: the smallest lead that counts as "helps"
PROBE_MAJORITY = 4 / 5   # the probe's "helps" needs a positive difference in >= 4 of 5 seeds
OBJECTIVE = {"voxel": "voxel-MAE", "gaussian": "MedGMAE", "random": "random init", "raw": "raw patches"}


@dataclass
class Arm:
    """Per-case scores of one arm: rows = replicates (seed 41 + k), columns = `cases`."""
    name: str
    seeds: list[int]
    cases: list[str]
    endpoint: np.ndarray   # [S, C] mean Dice over the endpoint organs
    all_organs: np.ndarray  # [S, C] mean Dice over every organ with a Dice

    def mean(self, which: str = "endpoint") -> tuple[float, float, float]:
        """(mean over seeds of the per-seed mean over cases, t-interval low, high)."""
        per_seed = getattr(self, which).mean(axis=1)
        low, high = t_interval(per_seed)
        return float(per_seed.mean()), low, high


def arm_from(name: str, seeds: list[int], per_case: list[dict[str, dict[str, float | None]]]) -> Arm:
    """An arm from one {case: {organ: Dice}} per seed; only the cases every seed scored with an endpoint."""
    cases = sorted(set.intersection(*(set(p) for p in per_case)))
    end = np.array([[organ_mean(p[c], ENDPOINT_ORGANS, f"{name} {c}") for c in cases] for p in per_case])
    every = np.array([[organ_mean(p[c], where=f"{name} {c}") for c in cases] for p in per_case])
    keep = np.isfinite(end).all(axis=0) & np.isfinite(every).all(axis=0)
    return Arm(name, seeds, [c for c, k in zip(cases, keep) if k], end[:, keep], every[:, keep])


# --- reading the runs' outputs -------------------------------------------------------------------

def probe_per_case(path: Path, raw: bool = False) -> dict[str, dict[str, float | None]]:
    record = json.loads(path.read_text())
    return (record["baselines"]["raw"] if raw else record)["per_case"]


def finetune_per_case(report: Path, trainer: str) -> dict[str, dict[str, float | None]]:
    """{case: {organ: Dice}} of a fine-tuning run's test-case summary (nnU-Net's layout, label ids)."""
    run = json.loads((report / "runs" / trainer / "medgmae_evaluate.json").read_text())
    summary = json.loads(Path(run["results"]["runs"][0]["summary"]).read_text())
    names = summary["medgmae"]["labels"]
    return {Path(c["reference_file"]).name.split(".")[0]: {names[k]: m["Dice"] for k, m in c["metrics"].items()}
            for c in summary["metric_per_case"]}


def probe_arms(args) -> dict[tuple[str, int, float], Arm]:
    """{(representation, pretraining step (0 for random init and raw), fraction): Arm} over the seeds."""
    seeds = [SEED + k for k in range(args.seeds)]
    arms = {}
    for fraction in PROBE_FRACTIONS:
        final = [checkpoints_of(args.root, "gaussian", s, (), args.pretrain_steps)[args.pretrain_steps] for s in seeds]
        random = [probe_json(args.root, "random", s, c, fraction, len(PROBE_FRACTIONS) > 1) for s, c in zip(seeds, final)]
        arms["random", 0, fraction] = arm_from("random init", seeds, [probe_per_case(p) for p in random])
        arms["raw", 0, fraction] = arm_from("raw patches", seeds, [probe_per_case(p, raw=True) for p in random])
        for decoder in DECODERS.values():
            curves = [checkpoints_of(args.root, decoder, s, args.keep_steps, args.pretrain_steps) for s in seeds]
            for step in curves[0]:
                paths = [probe_json(args.root, decoder, s, c[step], fraction, True) for s, c in zip(seeds, curves)]
                arms[decoder, step, fraction] = arm_from(f"{OBJECTIVE[decoder]} {step}", seeds,
                                                         [probe_per_case(p) for p in paths])
    return arms


def finetune_arms(args) -> dict[tuple[str, float], Arm]:
    """{(init, fraction): Arm} of the fine-tuning runs on the test cases."""
    report = args.root / "report"
    plan = [(init, LOW, args.replicates) for init in ("scratch", *DECODERS)]
    plan += [("scratch", 1.0, args.replicates), ("nnunet", LOW, args.nnunet_replicates)]
    return {(init, fraction): arm_from(f"{init} {fraction:g}", [SEED + k for k in range(n)],
                                       [finetune_per_case(report, trainer_of(init, fraction, k)) for k in range(n)])
            for init, fraction, n in plan if n}


# --- comparisons, gates and verdicts ------------------------------------------------------------

def compare(a: Arm, b: Arm, seeds: int | None = None) -> SeedComparison:
    """A minus B over their first `seeds` common replicates, on the cases both scored."""
    n = min(len(a.seeds), len(b.seeds)) if seeds is None else seeds
    cases = [c for c in a.cases if c in b.cases]
    pick = lambda arm: arm.endpoint[:n, [arm.cases.index(c) for c in cases]]  # noqa: E731
    return compare_over_seeds(pick(a), pick(b))


def passes(gate: SeedComparison) -> bool:
    return gate.t_low > 0 and gate.boot_low > 0


def ahead(c: SeedComparison, positive_needed: float) -> bool:
    """Positive in the needed share of seeds, both intervals above 0, and at least MARGIN."""
    return (c.positive >= math.ceil(positive_needed * c.seeds - 1e-9) and c.t_low > 0 and c.boot_low > 0
            and c.estimate >= MARGIN)


def below_margin(c: SeedComparison) -> bool:
    """Both intervals' upper ends under MARGIN: no lead of MARGIN is compatible with the seeds."""
    return max(c.t_high, c.boot_high) < MARGIN


def verdict(versus_voxel: SeedComparison, versus_scratch: SeedComparison, gates_pass: bool,
            positive_needed: float) -> str:
    """The package docstring's rule (positive_needed: the share of seeds, probe 4/5, fine-tuning all)."""
    if not gates_pass:
        return "uninformative"
    if ahead(versus_voxel, positive_needed) and ahead(versus_scratch, positive_needed):
        return "helps"
    if below_margin(versus_voxel) and below_margin(versus_scratch):
        return "does not help"
    if ahead(versus_scratch, positive_needed) and below_margin(versus_voxel):
        return "helps no more than voxel-MAE"
    return "inconclusive"


def analyse(args) -> dict:
    """Every number of experiment.md: arms, comparisons, gates and verdicts (fractions of Dice)."""
    probes, runs = probe_arms(args), finetune_arms(args)
    last = args.pretrain_steps
    probe_cmp = {
        "MedGMAE - voxel-MAE": compare(probes["gaussian", last, LOW], probes["voxel", last, LOW]),
        "MedGMAE - random init": compare(probes["gaussian", last, LOW], probes["random", 0, LOW]),
    }
    g1 = compare(probes["voxel", last, LOW], probes["random", 0, LOW])
    ft_cmp = {
        "MedGMAE - voxel-MAE": compare(runs["medgmae", LOW], runs["voxelmae", LOW]),
        "MedGMAE - scratch": compare(runs["medgmae", LOW], runs["scratch", LOW]),
    }
    g2 = compare(runs["scratch", 1.0], runs["scratch", LOW])
    extra = {"voxel-MAE - scratch": compare(runs["voxelmae", LOW], runs["scratch", LOW])}
    if ("nnunet", LOW) in runs:
        extra["nnU-Net - scratch"] = compare(runs["nnunet", LOW], runs["scratch", LOW])
    extra["probe at 100 %: MedGMAE - voxel-MAE"] = compare(probes["gaussian", last, 1.0], probes["voxel", last, 1.0])
    gates = {"G1 voxel-MAE probe beats random init": (g1, passes(g1)),
             "G2 scratch 100 % beats scratch 10 %": (g2, passes(g2))}
    verdicts = {"probe": verdict(*probe_cmp.values(), passes(g1), PROBE_MAJORITY),
                "fine-tuning": verdict(*ft_cmp.values(), passes(g1) and passes(g2), 1.0)}
    return {"probe_arms": probes, "finetune_arms": runs, "probe": probe_cmp, "finetune": ft_cmp, "other": extra,
            "gates": gates, "verdicts": verdicts, "quality": quality_rows(args)}


def quality_rows(args) -> list[dict]:
    """pretrain_quality's rows of every seed that has them (masked MSE, baseline, ceiling per checkpoint)."""
    rows = []
    for k in range(args.seeds):
        path = quality_json(args.root, SEED + k)
        if path.is_file():
            rows += [{**r, "seed": SEED + k} for r in json.loads(path.read_text())["rows"]]
    return rows
