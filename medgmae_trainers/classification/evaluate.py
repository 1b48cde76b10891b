"""Score a predictions CSV against a labels table: JSON, Markdown and a PNG of ROC curves."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import atomic_path, write_json_atomic, write_text_atomic
from medgmae_plans.runtime import UserError

from preprocessing.layouts.classification import LabelTable, read_rows
from .metrics import auroc, bootstrap_auroc, macro, threshold_metrics, youden_thresholds
from .plots import roc_curves_png


def write_predictions(path: Path, cases, classes, probs: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["case", *classes])
        for c, row in zip(cases, probs):
            w.writerow([c, *(f"{v:.6f}" for v in row)])


def read_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    path = Path(path)
    rows = read_rows(path, "predictions")
    if not rows or rows[0][:1] != ["case"] or len(rows[0]) < 2:
        raise UserError(f"{path}: header must be 'case,<class>...'")
    try:
        scores = np.array([[float(v) for v in r[1:]] for r in rows[1:]], np.float64)
    except ValueError:
        raise UserError(f"{path}: a score is not a number") from None
    if any(len(r) != len(rows[0]) for r in rows[1:]) or not len(rows) > 1 or not np.isfinite(scores).all():
        raise UserError(f"{path}: rows must have one finite score per class, and there must be at least one")
    return [r[0] for r in rows[1:]], rows[0][1:], scores.reshape(len(rows) - 1, len(rows[0]) - 1)


def align(pred_path: Path, table: LabelTable) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(cases, labels [N, K], scores [N, K]) for the predicted cases, checked against the labels table."""
    cases, classes, scores = read_predictions(pred_path)
    if classes != table.classes:
        raise UserError(f"{pred_path}: classes {classes} differ from the labels' {table.classes}")
    index = {c: i for i, c in enumerate(table.cases)}
    unknown = [c for c in cases if c not in index]
    if unknown:
        raise UserError(f"{pred_path}: cases without labels: {unknown[:5]}")
    return cases, table.labels[[index[c] for c in cases]], scores


def evaluate(pred_path: Path, table: LabelTable, out_dir: Path, *, n_boot: int = 1000, seed: int = 0,
             thresholds_from: Path | None = None, title: str = "") -> dict:
    cases, y, s = align(pred_path, table)
    per_class = auroc(y, s)
    boot = bootstrap_auroc(y, s, n_boot=n_boot, seed=seed)
    result = {
        "predictions": str(pred_path), "num_cases": len(cases), "classes": table.classes,
        "positives": [int(v) for v in y.sum(0)],
        "auroc": {c: _num(v) for c, v in zip(table.classes, per_class)},
        "macro_auroc": _num(macro(per_class)),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": boot["level"], "resampled": "cases",
                      "macro_ci": [_num(v) for v in boot["macro"]],
                      "per_class_ci": {c: [_num(v) for v in ci] for c, ci in zip(table.classes, boot["per_class"])}},
    }
    if thresholds_from is not None:
        src_cases, y_src, s_src = align(thresholds_from, table)
        if set(src_cases) & set(cases):
            raise UserError(f"{thresholds_from}: shares cases with {pred_path}; thresholds must come from another set")
        thr = youden_thresholds(y_src, s_src)
        m = threshold_metrics(y, s, thr)
        result["thresholds"] = {"chosen_on": str(thresholds_from), "rule": "Youden J (max sensitivity + specificity)",
                                "per_class": {c: {"threshold": _num(thr[k]), **{n: _num(m[n][k]) for n in m}}
                                              for k, c in enumerate(table.classes)}}
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "evaluation.json", result)
    write_text_atomic(out_dir / "evaluation.md", markdown(result))
    roc_curves_png(y, s, table.classes, per_class, boot["per_class"], out_dir / "roc_curves.png",
                   title or f"{Path(pred_path).name}: macro AUROC {result['macro_auroc']}")
    return result


def markdown(result: dict) -> str:
    lo, hi = result["bootstrap"]["macro_ci"]
    lines = [f"Macro AUROC **{_fmt(result['macro_auroc'])}** (95% bootstrap CI {_fmt(lo)}-{_fmt(hi)}, "
             f"{result['bootstrap']['n_boot']} resamples of the {result['num_cases']} cases)", "",
             "| class | positives | AUROC | 95% CI |" + (" threshold | sens | spec |" if "thresholds" in result else ""),
             "| --- | ---: | ---: | --- |" + (" ---: | ---: | ---: |" if "thresholds" in result else "")]
    for c, pos in zip(result["classes"], result["positives"]):
        a, b = result["bootstrap"]["per_class_ci"][c]
        row = f"| {c} | {pos} | {_fmt(result['auroc'][c])} | {_fmt(a)}-{_fmt(b)} |"
        if "thresholds" in result:
            t = result["thresholds"]["per_class"][c]
            row += f" {_fmt(t['threshold'])} | {_fmt(t['sensitivity'])} | {_fmt(t['specificity'])} |"
        lines.append(row)
    if "thresholds" in result:
        lines += ["", f"Thresholds chosen on {result['thresholds']['chosen_on']} ({result['thresholds']['rule']})."]
    return "\n".join(lines) + "\n"


def _num(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else round(v, 6)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
