"""The main job's report in plain words: `REPORT/main_job.md`, written and printed at the end of `python3 run.py demo`.

    python -m evaluation.main_job_report REPORT

It reads what the job's last steps left in REPORT: `medgmae_evaluate --test --compare`'s `per_organ.csv`
and `replicates.csv` (Dice on the test cases per init and organ, and the table's mean) and the two
probes' `probe_pretrained/probe.json` and `probe_random_init/probe.json`. It says which organs each
init learned (test Dice >= 50 %) and which it did not, the mean over the experiment's endpoint organs
(`preprocessing.labels.ENDPOINT_ORGANS`) and over all organs, the probe's means, and that one run per
init is one seed on one labelled subset, so a difference between the inits here is not evidence; it
ends with the experiment that answers the question.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from medgmae_plans.runtime import UserError, add_common_flags, cli_entry
from medgmae_plans.runtime.atomic import write_text_atomic
from preprocessing.labels import ENDPOINT_ORGANS

from .display import column_header
from .summary import organ_mean

LEARNED_PCT = 50.0  # an organ counts as learned at a mean test Dice of at least this
REPORT_MD = "main_job.md"
PROBES = {"pretrained": "probe_pretrained", "random init": "probe_random_init"}  # the main job's probe folders
EXPERIMENT = ("`python -m benchmarks.transfer` (the same recipe, replicated over seeds and labelled subsets, "
              "with paired intervals) and docs/results.md, \"Does MedGMAE pretraining help?\"")


@dataclass
class Scores:
    """Dice in % per organ (NaN: no Dice, nnU-Net's rule) and the mean over organs the source reports."""
    dice: dict[str, float]
    mean: float


@dataclass
class Probe:
    """One probe.json, in %: its encoder's scores, the raw baseline's, and the cases it scored."""
    encoder: Scores
    raw: Scores
    cases: list[str]
    scored_on: str


# ---------------------------------------------------------------- reading

def _rows(path: Path, columns: set[str]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror}); run medgmae_evaluate --test --compare first") \
            from None
    missing = columns - set(rows[0] if rows else ())
    if missing:
        raise UserError(f"{path}: no rows with the column(s) {', '.join(sorted(missing))} (medgmae_evaluate's layout)")
    return rows


def _pct(text: str, where: Path) -> float:
    """A CSV percentage; empty is nnU-Net's NaN (no Dice)."""
    try:
        return math.nan if text == "" else float(text)
    except ValueError:
        raise UserError(f"{where}: {text!r} is not a percentage") from None


def read_finetuned(report: Path) -> tuple[str, dict[str, Scores]]:
    """(the column, e.g. 'Phantom 10%', and {init: its run's test Dice}) from per_organ.csv and replicates.csv;
    refused unless there is one column and one run (replicate) per init: what this report describes."""
    organ_file, replicate_file = report / "per_organ.csv", report / "replicates.csv"
    organs = _rows(organ_file, {"dataset", "fraction", "init", "organ", "dice_pct"})
    replicates = _rows(replicate_file, {"dataset", "fraction", "init", "replicate", "dice_pct"})
    columns = {(r["dataset"], r["fraction"]) for r in organs + replicates}
    if len(columns) != 1:
        raise UserError(f"{organ_file}: expected one dataset and fraction (the main job's), found {len(columns)}")
    inits = list(dict.fromkeys(r["init"] for r in replicates))
    several = [i for i in inits if sum(r["init"] == i for r in replicates) > 1]
    if several:
        raise UserError(f"{replicate_file}: {', '.join(several)} have several replicates; this report describes "
                        f"one run per init (the main job): read table1.md")
    runs = {}
    for init in inits:
        dice = {r["organ"]: _pct(r["dice_pct"], organ_file) for r in organs if r["init"] == init}
        if not dice:
            raise UserError(f"{organ_file}: no organs of {init}, which {replicate_file} lists")
        mean = next(_pct(r["dice_pct"], replicate_file) for r in replicates if r["init"] == init)
        runs[init] = Scores(dice, mean)
    dataset, fraction = columns.pop()
    return column_header((dataset, float(fraction))), runs


def _scores(block: dict) -> Scores:
    return Scores({str(o): 100 * float(d) for o, d in dict(block["dice"]).items()}, 100 * float(block["mean_dice"]))


def read_probe(path: Path) -> Probe:
    """A probe.json (`evaluation.probe`'s layout), in %."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        return Probe(_scores(result), _scores(result["baselines"]["raw"]), [str(c) for c in result["cases"]],
                     str(result["scored_on"]))
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror}); run medgmae_probe first") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a medgmae_probe probe.json ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------- words

def endpoint_mean(dice: dict[str, float], where: str) -> float:
    """Mean over ENDPOINT_ORGANS (organs without a Dice left out, as the probe's means do)."""
    return organ_mean(dice, ENDPOINT_ORGANS, where)


def _fmt(pct: float, digits: int = 1) -> str:
    return "no Dice" if math.isnan(pct) else f"{pct:.{digits}f} %"


def _named(organs: list[str], dice: dict[str, float]) -> str:
    return ", ".join(f"{o} {_fmt(dice[o])}" for o in organs)


def organ_words(init: str, dice: dict[str, float]) -> str:
    """'Scratch learned 1 of 15 organs (test Dice >= 50 %): liver 71.9 %. Not learned: the other 14; 12 of 15
    organs are 0 (...), and aorta 2.6 %, postcava 2.1 %.'"""
    n = len(dice)
    learned = [o for o, d in dice.items() if d >= LEARNED_PCT]
    zero = [o for o, d in dice.items() if d == 0]
    low = [o for o, d in dice.items() if 0 < d < LEARNED_PCT]
    absent = [o for o, d in dice.items() if math.isnan(d)]
    text = (f"**{init}** learned {len(learned) or 'none'} of {n} organs (test Dice >= {LEARNED_PCT:g} %)"
            + (f": {_named(learned, dice)}" if learned else "") + ". ")
    if len(learned) == n:
        return text.strip()
    text += f"Not learned: {'all' if not learned else 'the other'} {n - len(learned)}"
    if zero:
        text += f"; {len(zero)} of {n} organs are 0 ({', '.join(zero)})"
    if low:
        text += f"{', and' if zero else ';'} {_named(low, dice)}"
    if absent:
        text += f"; without a Dice (in no test case's reference or prediction): {', '.join(absent)}"
    return text + "."


def finetune_section(column: str, runs: dict[str, Scores]) -> list[str]:
    n = len(next(iter(runs.values())).dice)
    rows = [(f"organs learned (test Dice >= {LEARNED_PCT:g} %)",
             [f"{sum(d >= LEARNED_PCT for d in s.dice.values())} of {len(s.dice)}" for s in runs.values()]),
            (f"mean Dice over the {len(ENDPOINT_ORGANS)} endpoint organs",
             [_fmt(endpoint_mean(s.dice, init), 2) for init, s in runs.items()]),
            (f"mean Dice over all {n} organs (table1.md)", [_fmt(s.mean, 2) for s in runs.values()])]
    lines = [f"## Fine-tuning ({column}): Dice on the held-out test cases", "",
             "| | " + " | ".join(runs) + " |", "| --- |" + " ---: |" * len(runs)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows]
    lines += ["", *(f"- {organ_words(init, s.dice)}" for init, s in runs.items()), "",
              f"The endpoint organs: {', '.join(ENDPOINT_ORGANS)} (postcava is the inferior vena cava).", ""]
    return lines


def probe_section(pretrained: Probe, random_init: Probe) -> list[str]:
    """The frozen-encoder probe's means; the raw baseline is the pretrained run's (it does not depend on
    the encoder, so both runs have the same)."""
    n = len(pretrained.encoder.dice)
    reps = {"pretrained encoder": pretrained.encoder, "its random init": random_init.encoder,
            "raw intensities (baseline)": pretrained.raw}
    lines = [f"## The frozen-encoder probe: a linear read-out's Dice on the {len(pretrained.cases)} "
             f"{pretrained.scored_on} cases", "",
             f"| representation | mean over the {len(ENDPOINT_ORGANS)} endpoint organs | mean over {n} organs |",
             "| --- | ---: | ---: |"]
    lines += [f"| {name} | {_fmt(endpoint_mean(s.dice, 'probe of the ' + name), 2)} | {_fmt(s.mean, 2)} |"
              for name, s in reps.items()]
    diff = round(pretrained.encoder.mean - random_init.encoder.mean, 1)  # as printed
    where = "above" if diff > 0 else "below" if diff < 0 else "level with"
    return lines + ["", f"A linear read-out of the pretrained encoder's features scores {abs(diff):.1f} points {where} "
                        f"its random init's (mean over {n} organs; one checkpoint, one probe seed).", ""]


def caveat_section() -> list[str]:
    return ["## What this does not show", "",
            "This is one seed and one labelled subset: each init is one fine-tuning run on one draw of the "
            "training cases, and the pretrained encoder comes from one pretraining run. A difference between "
            "the inits here is not evidence that pretraining helps or hurts: the spread over seeds is not "
            "measured here, and on this phantom it has been larger than the differences between inits. The "
            f"experiment that answers the question is {EXPERIMENT}.", ""]


def render(column: str, runs: dict[str, Scores], pretrained: Probe, random_init: Probe) -> str:
    return "\n".join(["# The main job: what this budget learned, and what it did not", "",
                      *finetune_section(column, runs), *probe_section(pretrained, random_init), *caveat_section()])


# ---------------------------------------------------------------- the command

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.main_job_report",
                                description="The main job's report in plain words: reads REPORT's per_organ.csv, "
                                            "replicates.csv and probe_*/probe.json, writes REPORT/main_job.md "
                                            "and prints it.")
    p.add_argument("report", metavar="REPORT", help="the main job's report folder (medgmae_output/report)")
    return add_common_flags(p)


def _main(argv: Sequence[str] | None) -> int:
    report = Path(build_parser().parse_args(argv).report)
    column, runs = read_finetuned(report)
    probes = {name: read_probe(report / folder / "probe.json") for name, folder in PROBES.items()}
    if probes["pretrained"].cases != probes["random init"].cases:
        raise UserError(f"{report / PROBES['random init'] / 'probe.json'}: scored on other cases than "
                        f"{report / PROBES['pretrained'] / 'probe.json'}, so the two are not comparable")
    text = render(column, runs, probes["pretrained"], probes["random init"])
    write_text_atomic(report / REPORT_MD, text)
    print(text)
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
