"""Runs side by side as the paper's Table 1: initialisation x (dataset, fraction), mean Dice in %.

Runs are grouped by (dataset, fraction, init) from their `medgmae_finetune.json`, and within a group
by replicate (the trainer tag r0, r1, ...; untagged is r0, `folders.REPLICATE_TAG`). A replicate's
value is the mean over its folds of each fold's summary foreground mean (the mean over organs of the
per-organ mean over cases); a cell is the mean over its replicates, shown as "mean ± sd" (sample sd
over replicates) when it has two or more. Rows follow the paper's order, Scratch, voxel-MAE, MedGMAE,
MedGMAE*, and only inits with at least one run are shown; a dataset's columns are the fractions run on
it. A missing cell is "—" in Markdown and empty in CSV. Markdown marks the best value of a column in
**bold** and the second <u>underlined</u>, as the paper does; CSV holds plain numbers without marks.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from medgmae_plans.constants import INITS
from medgmae_plans.runtime import UserError

from .display import column_header, init_display
from .folders import Run
from .summary import case_dice

MISSING = "—"


@dataclass
class Scored:
    """One evaluated fold: the run and its summary (nnU-Net layout)."""
    run: Run
    summary: dict


@dataclass
class Cell:
    """The runs of one (init, dataset, fraction), one entry per run (a fold of a replicate): its label,
    fold, replicate, foreground mean Dice and NSD in [0, 1], and {case: Dice} (`summary.case_dice`)."""
    runs: list[str] = field(default_factory=list)
    folds: list[str] = field(default_factory=list)
    replicates: list[str] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)
    case_dice: list[dict[str, float]] = field(default_factory=list)

    def replicate_means(self, metric: str) -> dict[str, float]:
        """{replicate: the mean over its folds}, in replicate order (r2 before r10)."""
        by_replicate: dict[str, list[float]] = {}
        for replicate, value in zip(self.replicates, getattr(self, metric)):
            by_replicate.setdefault(replicate, []).append(value)
        return {r: float(np.mean(by_replicate[r])) for r in sorted(by_replicate, key=_replicate_key)}

    def mean(self, metric: str) -> float:
        values = list(self.replicate_means(metric).values())
        return float(np.mean(values)) if values else math.nan

    def sd(self, metric: str) -> float:
        """The sample standard deviation over replicates (NaN with fewer than two)."""
        values = list(self.replicate_means(metric).values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan

    def case_matrix(self) -> tuple[list[str], np.ndarray]:
        """(cases, Dice [replicates, cases]): per replicate, each case's Dice averaged over the folds that
        scored it (one fold each on validation cases, every fold on test cases); only the cases that
        every replicate scored, in sorted order."""
        per_replicate: dict[str, dict[str, list[float]]] = {}
        for replicate, cases in zip(self.replicates, self.case_dice):
            for case, value in cases.items():
                per_replicate.setdefault(replicate, {}).setdefault(case, []).append(value)
        replicates = sorted(per_replicate, key=_replicate_key)
        common = sorted(set.intersection(*(set(per_replicate[r]) for r in replicates)))
        matrix = np.array([[np.mean(per_replicate[r][c]) for c in common] for r in replicates], np.float64)
        return common, matrix.reshape(len(replicates), len(common))


def _replicate_key(name: str):
    match = re.fullmatch(r"r(\d+)", name)
    return (0, int(match.group(1)), "") if match else (1, 0, name)


@dataclass
class Comparison:
    columns: list[tuple[str, float]]            # (dataset, fraction)
    rows: list[str]                             # inits in the paper's order
    cells: dict[tuple[str, str, float], Cell]   # (init, dataset, fraction) -> its runs
    organs: dict[tuple[str, str, float], dict[int, dict]]  # -> {label: {"name", "Dice", "NSD"}} mean over folds

    def value(self, init: str, column: tuple[str, float], metric: str = "dice") -> float:
        cell = self.cells.get((init, *column))
        return cell.mean(metric) if cell else math.nan

    def shown(self, init: str, column: tuple[str, float], metric: str = "dice") -> str:
        """The cell as Table 1 shows it: mean in %, with "± sd" over replicates when it has several."""
        cell = self.cells.get((init, *column))
        sd = cell.sd(metric) if cell else math.nan
        return _pct(self.value(init, column, metric)) + ("" if math.isnan(sd) else f" ± {100 * sd:.2f}")


def build_comparison(scored: Sequence[Scored]) -> Comparison:
    cells: dict[tuple[str, str, float], Cell] = {}
    per_organ: dict[tuple[str, str, float], list[dict]] = {}
    for item in scored:
        key = (item.run.init, item.run.dataset, item.run.fraction)
        cell = cells.setdefault(key, Cell())
        _check_new_run(cell, item.run)
        cell.runs.append(item.run.label)
        cell.folds.append(str(item.run.fold))
        cell.replicates.append(item.run.replicate)
        cell.dice.append(float(item.summary["foreground_mean"]["Dice"]))
        cell.nsd.append(float(item.summary["foreground_mean"].get("NSD", math.nan)))
        cell.case_dice.append(case_dice(item.summary))
        per_organ.setdefault(key, []).append(item.summary)
    columns = sorted({(d, f) for _, d, f in cells}, key=lambda c: (_dataset_sort_key(c[0]), c[1]))
    inits = {i for i, _, _ in cells}
    rows = [i for i in INITS if i in inits] + sorted(inits - set(INITS))
    organs = {key: _organ_means(summaries) for key, summaries in per_organ.items()}
    return Comparison(columns, rows, cells, organs)


def _check_new_run(cell: Cell, run: Run) -> None:
    """One run per (replicate, fold) in a cell: two would be averaged as if they were one replicate."""
    for label, fold, replicate in zip(cell.runs, cell.folds, cell.replicates):
        if (fold, replicate) == (str(run.fold), run.replicate):
            raise UserError(f"{run.label} and {label} are both replicate {replicate} of fold {fold} of "
                            f"{run.init} at fraction {run.fraction:g}: tag the trainers of replicates r0, r1, "
                            f"... (an untagged trainer counts as r0), or compare the variants separately")


def _dataset_sort_key(name: str):
    match = re.match(r"^Dataset(\d+)_", name)
    return (int(match.group(1)) if match else 10**9, name)


def _organ_means(summaries: list[dict]) -> dict[int, dict]:
    names = summaries[0].get("medgmae", {}).get("labels", {})
    out = {}
    for key in summaries[0]["mean"]:
        entry = {"name": names.get(key, f"label {key}")}
        for metric in ("Dice", "NSD"):
            values = [s["mean"][key].get(metric, math.nan) for s in summaries]
            entry[metric] = float(np.nanmean(values)) if not all(math.isnan(v) for v in values) else math.nan
        out[int(key)] = entry
    return out


# ---------------------------------------------------------------- ranking and formatting

def ranks(values: Sequence[float], decimals: int = 2) -> list[int | None]:
    """1 for the best (highest) value, 2 for the second, None otherwise. Values are fractions, compared
    as shown (percent with `decimals` places), so only values that print the same share a rank."""
    shown = [None if math.isnan(v) else round(100 * v, decimals) for v in values]
    distinct = sorted({v for v in shown if v is not None}, reverse=True)
    order = {v: i + 1 for i, v in enumerate(distinct[:2])}
    return [order.get(v) if v is not None else None for v in shown]


def _mark(text: str, rank: int | None) -> str:
    return f"**{text}**" if rank == 1 else f"<u>{text}</u>" if rank == 2 else text


def _pct(value: float) -> str:
    return MISSING if math.isnan(value) else f"{100 * value:.2f}"


def table_markdown(comp: Comparison, metric: str = "dice") -> str:
    name = {"dice": "Mean Dice (%)", "nsd": "Mean NSD at 1 mm (%)"}[metric]
    lines = ["| " + " | ".join([f"Init ({name})"] + [column_header(c) for c in comp.columns]) + " |",
             "| " + " | ".join(["---"] + ["---:"] * len(comp.columns)) + " |"]
    marks = {c: ranks([comp.value(i, c, metric) for i in comp.rows]) for c in comp.columns}
    for r, init in enumerate(comp.rows):
        cells = [_mark(comp.shown(init, c, metric), marks[c][r]) for c in comp.columns]
        lines.append("| " + " | ".join([init_display(init)] + cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(comp: Comparison, metric: str = "dice") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["init"] + [column_header(c) for c in comp.columns])
    for init in comp.rows:
        values = [comp.value(init, c, metric) for c in comp.columns]
        writer.writerow([init_display(init)] + [_plain(v) for v in values])
    return out.getvalue()


def replicates_csv(comp: Comparison) -> str:
    """One row per replicate of each cell: its folds and its mean Dice and NSD in %."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", "fraction", "init", "replicate", "folds", "dice_pct", "nsd_pct"])
    for column in comp.columns:
        for init in comp.rows:
            cell = comp.cells.get((init, *column))
            if cell is None:
                continue
            dice, nsd = cell.replicate_means("dice"), cell.replicate_means("nsd")
            for replicate in dice:
                writer.writerow([column[0], column[1], init_display(init), replicate,
                                 cell.replicates.count(replicate), _plain(dice[replicate]), _plain(nsd[replicate])])
    return out.getvalue()


def _plain(value: float) -> str:
    """A fraction as a plain CSV percentage, empty when missing."""
    return "" if math.isnan(value) else f"{100 * value:.2f}"


def per_organ_csv(comp: Comparison) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", "fraction", "init", "label", "organ", "dice_pct", "nsd_pct", "folds"])
    for column in comp.columns:
        for init in comp.rows:
            key = (init, *column)
            if key not in comp.organs:
                continue
            for label, entry in comp.organs[key].items():
                writer.writerow([column[0], column[1], init_display(init), label, entry["name"],
                                 _plain(entry["Dice"]), _plain(entry["NSD"]),
                                 len(comp.cells[key].folds)])
    return out.getvalue()


def per_organ_markdown(comp: Comparison) -> str:
    """One table per (dataset, fraction): organs x inits, Dice %, best bold and second underlined per organ."""
    parts = []
    for column in comp.columns:
        inits = [i for i in comp.rows if (i, *column) in comp.organs]
        labels = sorted({label for i in inits for label in comp.organs[(i, *column)]})
        parts.append(f"### {column_header(column)}: Dice (%) per organ\n")
        parts.append("| " + " | ".join(["organ"] + [init_display(i) for i in inits]) + " |")
        parts.append("| " + " | ".join(["---"] + ["---:"] * len(inits)) + " |")
        for label in labels:
            entries = [comp.organs[(i, *column)].get(label) for i in inits]
            values = [e["Dice"] if e else math.nan for e in entries]
            name = next(e["name"] for e in entries if e)
            row = [_mark(_pct(v), r) for v, r in zip(values, ranks(values))]
            parts.append("| " + " | ".join([f"{label} {name}"] + row) + " |")
        means = [comp.value(i, column) for i in inits]
        parts.append("| " + " | ".join(["**mean**"] + [_mark(_pct(v), r) for v, r in zip(means, ranks(means))]) + " |")
        parts.append("")
    return "\n".join(parts)
