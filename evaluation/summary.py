"""Evaluate case pairs and summarise them in nnU-Net's `summary.json` layout, NSD beside Dice.

    {"metric_per_case": [{"reference_file", "prediction_file", "metrics": {"1": {"Dice", "IoU", "NSD",
                          "TP", "FP", "FN", "TN", "n_ref", "n_pred"}, ...}}, ...],
     "mean": {"1": {same metrics, nanmean over cases}, ...},
     "foreground_mean": {same metrics, mean over the labels' means},
     "medgmae": {"labels": {"1": "spleen", ...}, "nsd_tolerance_mm": 1.0, "inputs": [...]}}

Label keys are strings as in nnU-Net's files, so `nnunetv2.evaluation.evaluate_predictions.load_summary_json`
reads ours; the extra `medgmae` block records names, the NSD tolerance and the inputs' sizes and times
(a summary whose inputs and settings are unchanged is reused instead of recomputed).
"""
from __future__ import annotations

import math
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae_plans.runtime.atomic import write_json_atomic
from medgmae_plans.runtime import progress

from .folders import CasePair, check_label_values, check_pairs_geometry, check_same_geometry, read_label_map
from .metrics import NSD_TOLERANCE_MM, case_metrics

SUMMARY_NAME = "summary_medgmae.json"  # beside nnU-Net's own validation/summary.json, never over it


def evaluate_case(pair: CasePair, labels: Sequence[int], allowed: Sequence[int] | None,
                  tolerance_mm: float = NSD_TOLERANCE_MM) -> dict:
    """One `metric_per_case` entry (label keys are ints here; strings only in the file)."""
    ref, ref_geometry = read_label_map(pair.ref)
    pred, pred_geometry = read_label_map(pair.pred)
    check_same_geometry(ref_geometry, pred_geometry, pair.ref, pair.pred)
    if allowed is not None:
        check_label_values(ref, allowed, pair.ref)
        check_label_values(pred, allowed, pair.pred)
    metrics = case_metrics(ref, pred, list(labels), ref_geometry.spacing_zyx, tolerance_mm)
    return {"reference_file": str(pair.ref), "prediction_file": str(pair.pred), "metrics": metrics}


def _evaluate_star(args) -> dict:
    return evaluate_case(*args)


def evaluate_pairs(pairs: Sequence[CasePair], labels: Sequence[int], allowed: Sequence[int] | None = None,
                   tolerance_mm: float = NSD_TOLERANCE_MM, num_processes: int = 1, pbar: bool = True,
                   desc: str = "cases") -> list[dict]:
    """`evaluate_case` over all pairs, in their order; `num_processes` > 1 uses a spawn pool (as
    nnU-Net does: the workers import torch through MONAI, which is not safe to fork)."""
    check_pairs_geometry(pairs)
    jobs = [(pair, list(labels), allowed, tolerance_mm) for pair in pairs]
    bar = progress(total=len(jobs), enabled=pbar, desc=desc, unit="case")
    try:
        if num_processes <= 1 or len(jobs) <= 1:
            results = []
            for job in jobs:
                results.append(_evaluate_star(job))
                bar.update()
            return results
        with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=get_context("spawn")) as pool:
            results = []
            for result in pool.map(_evaluate_star, jobs):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()


def summarise(per_case: list[dict], labels: dict[int, str], tolerance_mm: float = NSD_TOLERANCE_MM,
              inputs: list | None = None) -> dict:
    """nnU-Net's summary (string label keys) of `evaluate_case` results, plus the `medgmae` block."""
    metric_names = list(next(iter(per_case[0]["metrics"].values())).keys()) if per_case and labels else []
    means = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a label absent from every case is NaN
        for label in labels:
            means[str(label)] = {m: _num(np.nanmean([c["metrics"][label][m] for c in per_case]))
                                 for m in metric_names}
        foreground = {m: _num(np.mean([means[str(label)][m] for label in labels])) for m in metric_names}
    cases = [{"reference_file": c["reference_file"], "prediction_file": c["prediction_file"],
              "metrics": {str(k): {m: _num(v) for m, v in entry.items()} for k, entry in c["metrics"].items()}}
             for c in per_case]
    return {
        "foreground_mean": foreground,
        "mean": means,
        "medgmae": {"labels": {str(k): v for k, v in labels.items()}, "nsd_tolerance_mm": float(tolerance_mm),
                    "num_cases": len(per_case), "inputs": inputs or []},
        "metric_per_case": cases,
    }


def _num(value):
    """Plain JSON numbers: ints stay ints, floats are floats (NaN stays NaN, as nnU-Net writes it)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return float(value)


def input_stamps(pairs: Sequence[CasePair]) -> list[list]:
    """[case, ref size, ref mtime_ns, pred size, pred mtime_ns] per pair: what a cached summary depends on."""
    stamps = []
    for pair in pairs:
        r, p = pair.ref.stat(), pair.pred.stat()
        stamps.append([pair.case, r.st_size, r.st_mtime_ns, p.st_size, p.st_mtime_ns])
    return stamps


def load_if_current(path: Path, labels: dict[int, str], tolerance_mm: float, stamps: list[list]) -> dict | None:
    """The summary at `path` if it was computed from the same files, labels and tolerance, else None."""
    import json

    try:
        summary = json.loads(Path(path).read_text())
        block = summary["medgmae"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = (block.get("labels") == {str(k): v for k, v in labels.items()}
            and math.isclose(block.get("nsd_tolerance_mm", -1.0), tolerance_mm)
            and block.get("inputs") == stamps)
    return summary if same else None


def write_summary(summary: dict, path: Path) -> Path:
    write_json_atomic(path, summary)
    return Path(path)


def foreground_dice(summary: dict) -> float:
    return float(summary["foreground_mean"]["Dice"])


def case_dice(summary: dict) -> dict[str, float]:
    """{case: its Dice averaged over the summary's labels} (NaN-ignoring, as nnU-Net's means; NaN when
    no label is in the case's reference or prediction), keyed by the reference's file name, which
    names the same case in every run scored on it."""
    labels = list(summary["medgmae"]["labels"])
    out = {}
    for entry in summary["metric_per_case"]:
        values = [entry["metrics"][label]["Dice"] for label in labels]
        finite = [v for v in values if not math.isnan(v)]
        out[Path(entry["reference_file"]).name] = float(np.mean(finite)) if finite else math.nan
    return out


def organ_mean(dice: dict[str, float | None], organs: Sequence[str] | None = None, where: str = "scores") -> float:
    """The mean Dice over `organs` (every organ in `dice` when None) that have one: an organ absent from
    both reference and prediction has none (NaN, or null in JSON) and is left out; NaN when none has.
    An organ not in `dice` at all is an error naming `where`."""
    from medgmae_plans.runtime import UserError

    names = list(dice) if organs is None else list(organs)
    missing = [o for o in names if o not in dice]
    if missing:
        raise UserError(f"{where}: no Dice for the organ(s) {', '.join(missing)}")
    values = [dice[o] for o in names if dice[o] is not None and not math.isnan(dice[o])]
    return float(np.mean(values)) if values else math.nan

