"""`medgmae_evaluate --test`: each run predicts its dataset's held-out test cases, which are then scored.

    $nnUNet_raw/<Dataset>/imagesTs/<case>_0000.nii.gz   the test images (`medgmae_make_phantom --test N`)
    $nnUNet_raw/<Dataset>/labelsTs/<case>.nii.gz        their labels
    <fold folder>/test/<case>.nii.gz                    the run's predictions, and summary_medgmae.json

Validation cases (fold 0's) are for choices while tuning; test cases are for reporting, and no
training run ever sees them. The predictions come from nnU-Net's own predictor on the run's final
checkpoint (`medgmae_predict`, one process per run: nnU-Net's trainer lookup walks `sys.modules`
and fails when a second lookup in one process meets the first predictor's threads), with the
sliding-window step and mirroring of the run's final
validation, so a CPU run scores its test cases at the cost it validated at. They are written into a
hidden folder and renamed into place together with a stamp of what they were made from (checkpoint,
images, settings): a rerun reuses them until one of those changes, and a killed run leaves no half
folder that could pass for a finished one.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from medgmae_plans.runtime.atomic import replaced_directory, write_json_atomic
from medgmae_plans.runtime import UserError

from .folders import Run

TEST_DIR = "test"
STAMP = "test_predictions.json"  # beside the predictions' folder, as the preprocessed data's signature


def test_folders(run: Run, raw_root: Path) -> tuple[Path, Path]:
    """(imagesTs, labelsTs) of the run's dataset; a one-line error when either is missing."""
    images, labels = (Path(raw_root) / run.dataset / sub for sub in ("imagesTs", "labelsTs"))
    for folder in (images, labels):
        if not folder.is_dir() or not any(folder.iterdir()):
            raise UserError(f"{folder}: no test cases for --test (nnU-Net's raw layout puts them in imagesTs/ and "
                            f"labelsTs/; medgmae_make_phantom writes them with --test N)")
    return images, labels


def test_cases(labels: Path, ending: str) -> list[str]:
    return sorted(p.name[: -len(ending)] for p in labels.iterdir() if p.name.endswith(ending))


def predict_test_cases(run: Run, raw_root: Path, pbar: bool, log) -> Path:
    """The run's predictions of its dataset's test cases (made now unless up to date); their folder."""
    from preprocessing.preprocess import data_signature

    images, _ = test_folders(run, raw_root)
    checkpoint = run.fold_dir / "checkpoint_final.pth"
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: missing; --test needs the run's final checkpoint")
    settings = {"step_size": float(run.meta.get("val_step_size") or 0.5),
                "mirroring": bool(run.meta.get("val_mirroring", True))}
    signature = data_signature([checkpoint, *sorted(images.iterdir())], settings, {})
    out, stamp = run.fold_dir / TEST_DIR, run.fold_dir / STAMP
    try:
        if out.is_dir() and json.loads(stamp.read_text())["signature"] == signature:
            return out
    except (OSError, ValueError, KeyError):
        pass
    log.info(f"{run.label}: predicting {len(list(images.iterdir()))} test images (step {settings['step_size']:g}, "
             f"mirroring {'on' if settings['mirroring'] else 'off'})")
    stamp.unlink(missing_ok=True)
    with replaced_directory(out) as tmp:
        _predict(run, images, Path(tmp), settings, pbar)
        for extra in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
            (Path(tmp) / extra).unlink(missing_ok=True)  # nnU-Net's copies; the folder holds predictions only
    write_json_atomic(stamp, {"signature": signature, **settings})
    return out


def _predict(run: Run, images: Path, out: Path, settings: dict, pbar: bool) -> None:
    """`medgmae_predict` on the run's fold, in its own process; its one-line error becomes ours."""
    model = run.fold_dir.parent                       # <Trainer>__<Plans>__<configuration>
    trainer, plans, configuration = model.name.split("__")
    cmd = [sys.executable, "-m", "medgmae_trainers.finetune.predict_cli", "-i", str(images), "-o", str(out),
           "-d", run.dataset, "-tr", trainer, "-p", plans, "-c", configuration, "-f", str(run.fold),
           "-step_size", str(settings["step_size"]), "-npp", "0", "-nps", "0"]
    cmd += [] if settings["mirroring"] else ["--disable_tta"]
    cmd += [] if pbar else ["--no-pbar"]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["no message"]
        raise UserError(f"{model}: predicting the test cases failed ({lines[-1]})")
