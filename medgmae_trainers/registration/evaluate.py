"""Score predictions: Dice per structure of the warped moving labels against the fixed ones, mean
Dice, % voxels with det(J) <= 0, and the endpoint error where the true displacement is known.

Reads what `predict` wrote (predict.json, *_warped_seg.nii.gz, *_ddf.nii.gz) and the dataset's labels;
writes evaluation.json (per pair, per structure, summary) and evaluation.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import write_json_atomic, write_text_atomic
from medgmae_plans.runtime import UserError

from preprocessing.layouts.registration import Pair, RegistrationDataset, itk_to_ddf
from .inference import score_pair
from .trainer import summarise


def evaluate(pred_dir: Path, out: Path, dataset: Path | None = None) -> dict:
    run = pred_dir / "predict.json"
    if not run.is_file():
        raise UserError(f"{pred_dir} has no predict.json (run medgmae_register predict first)")
    info = json.loads(run.read_text())
    ds = RegistrationDataset(Path(dataset or info["settings"]["dataset"]))
    per_pair = {}
    for q in info["results"]["pairs"]:
        pair = Pair(q["moving"], q["fixed"], q.get("flow"))
        arr, img = ds.read(_need(pred_dir / f"{pair.name}_ddf.nii.gz"), vector=True)
        ddf = itk_to_ddf(arr, img)
        seg_path = pred_dir / f"{pair.name}_warped_seg.nii.gz"
        wseg = ds.read(seg_path)[0] if seg_path.is_file() else None
        lab = ds.has_labels
        per_pair[pair.name] = score_pair(ddf, list(ds.labels), ds.label(pair.moving) if lab else None,
                                         ds.label(pair.fixed) if lab else None, ds.spacing, ds.flow(pair),
                                         warped_seg=wseg)
    per_label = {}
    for lab_id, name in ds.labels.items():
        after = [p["dice"][lab_id] for p in per_pair.values() if "dice" in p and not np.isnan(p["dice"].get(lab_id, np.nan))]
        before = [p["dice_before"][lab_id] for p in per_pair.values()
                  if "dice" in p and not np.isnan(p["dice_before"].get(lab_id, np.nan))]
        if after:
            per_label[name] = {"id": lab_id, "dice": float(np.mean(after)), "dice_before": float(np.mean(before)),
                               "pairs": len(after)}
    result = {"dataset": ds.name, "predictions": str(pred_dir), "summary": summarise(per_pair),
              "per_structure": per_label, "pairs": per_pair}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "evaluation.json", _clean(result))
    write_text_atomic(out / "evaluation.md", markdown(result))
    return result


def _clean(obj):
    """JSON without NaN (structures absent from a pair become null)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else float(obj)
    return obj


def _need(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path} is missing (predict writes it)")
    return path


def _f(v, fmt=".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"# Registration evaluation: {result['dataset']}", "",
             f"{len(result['pairs'])} pairs from `{result['predictions']}`", "",
             "| metric | value |", "|---|---|",
             f"| mean Dice (unregistered) | {_f(s.get('mean_dice_before'))} |",
             f"| mean Dice (registered) | {_f(s.get('mean_dice'))} |",
             f"| % voxels with det(J) <= 0 | {_f(s.get('nonpos_jacobian_pct'), '.3f')} |"]
    if "epe_mm" in s:
        lines += [f"| endpoint error, mm (unregistered) | {_f(s.get('epe_mm_before'), '.2f')} |",
                  f"| endpoint error, mm (registered) | {_f(s.get('epe_mm'), '.2f')} |"]
    lines += ["", "## Dice per structure", "", "| structure | id | before | after | pairs |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {v['id']} | {_f(v['dice_before'])} | {_f(v['dice'])} | {v['pairs']} |"
              for name, v in result["per_structure"].items()]
    lines += ["", "## Per pair", "", "| pair | Dice before | Dice after | % det(J)<=0 | EPE mm |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {_f(p.get('mean_dice_before'))} | {_f(p.get('mean_dice'))} | "
              f"{_f(p['nonpos_jacobian_pct'], '.3f')} | {_f(p.get('epe_mm'), '.2f')} |" for name, p in result["pairs"].items()]
    return "\n".join(lines) + "\n"
