"""Each pretrained init against scratch in Table 1: the paired bootstrap interval of the Dice difference.

For every (dataset, fraction) column with scratch runs, each pretrained init's runs are paired with
scratch's by case (`Cell.case_matrix`: per replicate, the per-case Dice averaged over organs and
folds) and `bootstrap.paired_bootstrap` gives the mean difference over cases and its 95 % interval.
Only the cases that every replicate of both inits scored are used (all of them when every run was
scored on the same test cases, `--test`); cases without a Dice (no organ in reference or prediction)
are left out of both. The estimate is the mean over cases of the per-case difference, so it can
differ a little from the difference of the table's cells, which average each organ over cases first.

The interval resamples cases, not seeds: it says whether these runs differ on these cases. Where
both inits have the same replicate tags (replicate k of each drew the same fine-tuning seed), the
difference of each replicate pair is given too, and the words say when the replicates disagree in
sign, so a lead carried by one seed pair is not read as the init's.
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

import numpy as np

from .bootstrap import LEVEL, RESAMPLES, PairedInterval, paired_bootstrap
from .compare import Cell, Comparison
from .display import column_header, init_display

SCRATCH = "scratch"


@dataclass(frozen=True)
class VersusScratch:
    """One pretrained init against scratch in one column; `interval` is None when no case pairs them."""
    init: str
    column: tuple[str, float]
    replicates: int
    scratch_replicates: int
    interval: PairedInterval | None
    by_replicate: tuple[float, ...] = ()  # replicate k minus scratch's replicate k, for the shared tags

    @property
    def replicates_agree(self) -> bool:
        """Every replicate pair on the interval's side of 0 (True when there is nothing to disagree)."""
        i = self.interval
        if i is None or not i.excludes_zero:
            return True
        return all((d > 0) == (i.low > 0) and d != 0 for d in self.by_replicate)

    def to_json(self) -> dict:
        return {"dataset": self.column[0], "fraction": self.column[1], "init": self.init,
                "replicates": self.replicates, "scratch_replicates": self.scratch_replicates,
                "by_replicate": list(self.by_replicate),
                "interval": None if self.interval is None else
                {**asdict(self.interval), "excludes_zero": self.interval.excludes_zero}}


def versus_scratch(comp: Comparison) -> list[VersusScratch]:
    """Every pretrained init against scratch, in the table's column and row order."""
    out = []
    for column in comp.columns:
        scratch = comp.cells.get((SCRATCH, *column))
        if scratch is None:
            continue
        for init in comp.rows:
            cell = comp.cells.get((init, *column))
            if init == SCRATCH or cell is None:
                continue
            interval, by_replicate = _paired(cell, scratch)
            out.append(VersusScratch(init, column, len(set(cell.replicates)), len(set(scratch.replicates)),
                                     interval, by_replicate))
    return out


def _paired(pretrained: Cell, scratch: Cell) -> tuple[PairedInterval | None, tuple[float, ...]]:
    """The interval over the cases both cells scored in every replicate, each with a Dice; and, when
    the two cells have the same two or more replicate tags, each replicate pair's mean difference over
    those cases."""
    ours_cases, ours = pretrained.case_matrix()
    theirs_cases, theirs = scratch.case_matrix()
    theirs_set = set(theirs_cases)
    common = [c for c in ours_cases if c in theirs_set]
    ours = ours[:, [ours_cases.index(c) for c in common]]
    theirs = theirs[:, [theirs_cases.index(c) for c in common]]
    scored = np.isfinite(ours).all(axis=0) & np.isfinite(theirs).all(axis=0)
    if not scored.any():
        return None, ()
    ours, theirs = ours[:, scored], theirs[:, scored]
    same_tags = list(pretrained.replicate_means("dice")) == list(scratch.replicate_means("dice"))  # case_matrix's row order
    by_replicate = tuple(float(d) for d in (ours - theirs).mean(axis=1)) if same_tags and len(ours) > 1 else ()
    return paired_bootstrap(ours, theirs), by_replicate


# ---------------------------------------------------------------- formatting

def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def intervals_markdown(results: list[VersusScratch]) -> str:
    """What was resampled, a table of the differences (Dice points) and their intervals, then the same
    in words."""
    if not results:
        return ""
    lines = [f"Per case, Dice averaged over organs, folds and replicates; the cases resampled {RESAMPLES:,} "
             "times with a fixed seed (evaluation/bootstrap.py).", "", f"| Column | Init | Dice minus Scratch (points) | {100 * LEVEL:g} % interval | cases "
             "| replicates (init / Scratch) | excludes 0 |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        i = r.interval
        numbers = ["—", "—", "0", "no pairs"] if i is None else \
            [_points(i.difference), f"{_points(i.low)} to {_points(i.high)}", str(i.cases),
             "yes" if i.excludes_zero else "no"]
        lines.append("| " + " | ".join([column_header(r.column), init_display(r.init), *numbers[:3],
                                        f"{r.replicates} / {r.scratch_replicates}", numbers[3]]) + " |")
    *sentences, verdict = in_words(results)
    return "\n".join(lines) + "\n\n" + "\n".join(sentences) + "\n\n" + verdict + "\n"  # the verdict its own paragraph


def in_words(results: list[VersusScratch]) -> list[str]:
    """One sentence per comparison, then (the last line) which intervals exclude 0."""
    lines, excluding = [], []
    for r in results:
        name, where, i = init_display(r.init), column_header(r.column), r.interval
        if i is None:
            lines.append(f"- {name} vs Scratch at {where}: no case was scored by every run of both, no interval.")
            continue
        verdict = (f"{name} is better" if i.low > 0 else f"{name} is worse") if i.excludes_zero else \
            "no difference is shown"
        if not r.replicates_agree:
            verdict += " on these cases, but not in every replicate: the seeds' spread, which the interval " \
                       "does not cover, is as large as the difference"
        if min(r.replicates, r.scratch_replicates) < 2:
            verdict += " (one replicate: the seeds' spread is not measured)"
        pairs = f"; replicate by replicate {', '.join(_points(d) for d in r.by_replicate)}" if r.by_replicate else ""
        lines.append(f"- {name} minus Scratch at {where}: {_points(i.difference)} Dice points, "
                     f"{100 * i.level:g} % interval {_points(i.low)} to {_points(i.high)} ({i.cases} cases, "
                     f"{r.replicates} vs {r.scratch_replicates} replicates{pairs}): the interval "
                     f"{'excludes' if i.excludes_zero else 'contains'} 0, {verdict}.")
        if i.excludes_zero:
            excluding.append(f"{name} at {where}" + ("" if r.replicates_agree else " (not in every replicate)"))
    lines.append("Intervals that exclude 0: " + ", ".join(excluding) + "." if excluding else
                 "No interval excludes 0: no pretrained init differs from Scratch beyond case-to-case noise.")
    return lines


def intervals_csv(results: list[VersusScratch]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", "fraction", "init", "replicates", "scratch_replicates", "cases",
                     "difference_pct", "low_pct", "high_pct", "excludes_zero", "by_replicate_pct"])
    for r in results:
        i = r.interval
        numbers = ["0", "", "", "", ""] if i is None else \
            [i.cases, *(f"{100 * v:.2f}" for v in (i.difference, i.low, i.high)), int(i.excludes_zero)]
        writer.writerow([r.column[0], r.column[1], init_display(r.init), r.replicates, r.scratch_replicates,
                         *numbers, " ".join(f"{100 * d:.2f}" for d in r.by_replicate)])
    return out.getvalue()
