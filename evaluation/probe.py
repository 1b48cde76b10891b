"""`medgmae_probe`: what a pretrained encoder has learned, measured in minutes by a frozen linear probe.

    medgmae_probe -d DATASET -c CONFIGURATION --checkpoint CKPT [--random-init] [--fold 0] [--fraction 0.1]
                  [--seed 0] [-o OUT] [--force]

The checkpoint's encoder (or, with `--random-init`, its architecture with fresh weights) is run
frozen over sliding windows of every case; its features (`medgmae_trainers.probe.features`) feed a
class-balanced linear softmax fitted on the fold's training cases of the fraction (the cases
`medgmae_train` trains on), with its L2 weight chosen on the fold's validation cases, and the probe's
segmentation is scored with Dice per organ on the test cases (`imagesTs`/`labelsTs`) when the dataset
has them, else on the validation cases. Raw intensities in token-sized patches, reduced by PCA to
the same width, go through the same fit in the same run: the baseline. Everything is on the
configuration's preprocessed grid. A rerun whose inputs (the settings that change the numbers, and
the checkpoint, preprocessed and test files) are those OUT/probe.json records reuses it (`--force`
recomputes), so a job stopped half way resumes without probing twice. The command lives in
`evaluation` because it scores with `metrics` and `summary`; the features and the fit are in
`medgmae_trainers/probe/`.
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae_plans.runtime.atomic import write_json_atomic
from medgmae_plans.configurations import CONFIGURATIONS
from medgmae_plans.constants import HU_WINDOW
from medgmae_plans.runtime import (UserError, add_common_flags, check_range, check_writable, cli_entry, setup_run_log,
                                   write_run_json)

from .folders import file_ending_of, read_dataset_labels
from .metrics import confusion_counts, overlap_metrics
from .summary import summarise
from .test_cases import test_cases

PROBE_JSON = "probe.json"
OVERLAY_PNG = "probe_overlay.png"
OVERLAY_CASES = 3
DEFAULT_FRACTION = 0.1


def build_parser() -> argparse.ArgumentParser:
    from medgmae_trainers.probe.linear import L2_WEIGHTS, PER_CLASS

    p = argparse.ArgumentParser(
        prog="medgmae_probe",
        description="Frozen-encoder linear probe: the encoder's UNETR skips and final tokens over sliding windows, "
                    "a class-balanced linear softmax fitted on the fold's training cases of the fraction (L2 "
                    f"weight from {', '.join(f'{w:g}' for w in L2_WEIGHTS)} chosen on its validation cases), Dice "
                    "per organ on the test cases (else the validation cases); raw intensities in token-sized "
                    "patches (PCA to the same width) as the baseline in the same run. Writes OUT/probe.json.")
    p.add_argument("-d", "--dataset", required=True, help="dataset id, name or alias (as medgmae_train)")
    p.add_argument("-c", "--configuration", required=True,
                   help="plans configuration: " + ", ".join(CONFIGURATIONS))
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="medgmae_pretrain checkpoint_final.pt")
    p.add_argument("--random-init", action="store_true",
                   help="the checkpoint's architecture with fresh weights (drawn with --seed): the scratch representation")
    p.add_argument("--fold", help="cross-validation fold 0..4 or 'all', as medgmae_train (default 0)")
    p.add_argument("--fraction", help=f"fraction of the fold's training cases the probe is fitted on, in (0, 1]: "
                                      f"the nested subsets of medgmae_train (default {DEFAULT_FRACTION:g})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the training voxels drawn and of --random-init's weights, >= 0 (default 0)")
    p.add_argument("--fraction-seed", type=int,
                   help="seed of the fraction's shuffle, as medgmae_train's (default: medgmae_train's default)")
    p.add_argument("--samples-per-class", type=int, default=PER_CLASS,
                   help=f"training voxels per class over the training cases, >= 1 (default {PER_CLASS})")
    p.add_argument("-o", "--out", help="output folder (default: $nnUNet_results/<Dataset>/MedGMAE_probe/"
                                       "<checkpoint folder>__<pretrained|random>__<configuration>__fold<k>_f<pct>_s<seed>)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--threads", type=int, help="torch threads on a CPU, >= 1 (default: torch's)")
    p.add_argument("--force", action="store_true",
                   help="probe again even if OUT/probe.json was made from the same inputs and settings")
    return add_common_flags(p)


@dataclass
class Probed:
    """One representation's probe: the L2 weights' validation Dice, the chosen one, its scored summary."""
    name: str
    width: int
    l2_by_validation: dict
    l2: float
    summary: dict
    segmentations: list


def score(cases, segmentations: Sequence[np.ndarray], labels: dict[int, str]) -> dict:
    """nnU-Net's summary (Dice per label, nanmean over cases) of probe segmentations against the cases' labels."""
    per_case = []
    for case, seg in zip(cases, segmentations):
        counts = confusion_counts(case.seg, seg, list(labels))
        per_case.append({"reference_file": case.name, "prediction_file": case.name,
                         "metrics": {label: overlap_metrics(*counts[label]) for label in labels}})
    return summarise(per_case, labels)


def label_dice(summary: dict, labels: dict[int, str]) -> tuple[dict[str, float], float]:
    """({label name: mean Dice}, their mean over the labels with a Dice: a label in neither the reference nor
    the prediction of any scored case has none, nnU-Net's NaN, and is left out)."""
    dice = {name: float(summary["mean"][str(label)]["Dice"]) for label, name in labels.items()}
    defined = [v for v in dice.values() if not math.isnan(v)]
    return dice, float(np.mean(defined)) if defined else math.nan


def probe_representation(rep, train, val, scored, labels: dict[int, str], n_classes: int, seed: int,
                         per_class: int, log) -> Probed:
    """Fit `rep`'s probe on `train` for every L2 weight, keep the best on `val`, segment and score `scored`."""
    from medgmae_trainers.probe.linear import L2_WEIGHTS, fit_linear, training_samples

    t0 = time.time()
    rep.fit(train)
    x, y = training_samples([rep.field(c.image) for c in train], [c.seg for c in train], rep.stride, n_classes,
                            per_class, seed)
    val_fields = [rep.field(c.image) for c in val]
    log.info(f"{rep.name}: {x.shape[0]} training voxels x {x.shape[1]} features, {len(val)} validation cases "
             f"({time.time() - t0:.1f} s)")
    best, by_l2 = None, {}
    probe = None
    for l2 in L2_WEIGHTS:
        probe = fit_linear(x, y, n_classes, l2, start=probe)
        segs = [probe.segment(f, rep.stride, c.seg.shape) for f, c in zip(val_fields, val)]
        _, mean = label_dice(score(val, segs, labels), labels)
        by_l2[f"{l2:g}"] = round(mean, 6)
        log.info(f"{rep.name}: L2 {l2:g}: validation mean Dice {mean:.4f}")
        if best is None or mean > best[1]:
            best = (probe, mean, segs)
    probe, _, val_segs = best
    if scored is val:
        segs = val_segs
    else:
        segs = [probe.segment(rep.field(c.image), rep.stride, c.seg.shape) for c in scored]
    log.info(f"{rep.name}: L2 {probe.l2:g} chosen; {time.time() - t0:.1f} s")
    return Probed(rep.name, rep.width, by_l2, probe.l2, score(scored, segs, labels), segs)


def _window(plans: dict, configuration: str, plans_file: Path) -> int:
    patch = [int(s) for s in plans["configurations"][configuration]["patch_size"]]
    if len(set(patch)) != 1:
        raise UserError(f"{plans_file}: configuration {configuration} has a non-cubic patch {patch}; the probe's "
                        f"sliding windows are the encoder's cubic input")
    return patch[0]


def _test_pairs(raw_dataset: Path, ending: str) -> list[tuple[str, Path, Path]]:
    """(case, image, label) of the dataset's test cases; [] when it has none."""
    images, labels = raw_dataset / "imagesTs", raw_dataset / "labelsTs"
    if not labels.is_dir() or not images.is_dir():
        return []
    pairs = []
    for case in test_cases(labels, ending):
        image = images / f"{case}_0000{ending}"
        if not image.is_file():
            raise UserError(f"{image}: missing; {labels / (case + ending)} has no image (nnU-Net's raw layout)")
        pairs.append((case, image, labels / f"{case}{ending}"))
    return pairs


def _default_out(results: Path, dataset: str, checkpoint: Path, random_init: bool, configuration: str, fold,
                 fraction: float, seed: int) -> Path:
    from medgmae_trainers.finetune.fractions import fraction_tag

    init = "random" if random_init else "pretrained"
    return (results / dataset / "MedGMAE_probe"
            / f"{checkpoint.parent.name}__{init}__{configuration}__fold{fold}_{fraction_tag(fraction)}_s{seed}")


def _inputs(settings: dict, checkpoint: Path, data: Path, test: Sequence[tuple[str, Path, Path]]) -> dict:
    """What probe.json's numbers depend on: the settings that change them, and the checkpoint, preprocessed
    and test files they were computed from (path, size, modification time, as a summary's inputs)."""
    files = [Path(checkpoint).resolve(), *sorted(p.resolve() for p in data.iterdir() if p.is_file()),
             *(p.resolve() for _, image, label in test for p in (image, label))]
    stamps = []
    for path in files:
        stat = path.stat()
        stamps.append([str(path), stat.st_size, stat.st_mtime_ns])
    return {"settings": settings, "files": stamps}


def _reusable(probe_json: Path, inputs: dict) -> dict | None:
    """The probe.json at `probe_json` if it was made from exactly `inputs`, else None (missing, unreadable,
    written before probe.json recorded its inputs, or made from other inputs)."""
    try:
        result = json.loads(probe_json.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("inputs") == inputs else None


def _table(probed: Sequence[Probed], labels: dict[int, str], scored_on: str) -> str:
    widths = [max(10, len(p.name)) for p in probed]
    head = f"{'label':>24}" + "".join(f"  {p.name:>{w}}" for p, w in zip(probed, widths))
    lines = [f"Dice on the {scored_on} cases (probe L2 "
             + ", ".join(f"{p.name} {p.l2:g}" for p in probed) + ")", head]
    for label, name in labels.items():
        lines.append(f"{f'{label} {name}':>24}" + "".join(f"  {p.summary['mean'][str(label)]['Dice']:{w}.4f}"
                                                         for p, w in zip(probed, widths)))
    lines.append(f"{'mean':>24}" + "".join(f"  {label_dice(p.summary, labels)[1]:{w}.4f}"
                                           for p, w in zip(probed, widths)))
    return "\n".join(lines)


def _overlay(cases, segs, out_png: Path, labels: dict[int, str], spacing, title: str, ras: bool) -> Path:
    """The probe's segmentations over the ground truth; arrays read through the reorienting reader (RAS) are
    turned to the radiological view of the other pictures (LPS: y and x reversed)."""
    from .plots import OverlayArrays, overlay_arrays

    low, high = HU_WINDOW
    view = (lambda a: a[:, ::-1, ::-1]) if ras else (lambda a: a)
    rows = [OverlayArrays(c.name, view(low + c.image * (high - low)), view(c.seg), view(s), spacing)
            for c, s in zip(cases, segs)]
    return overlay_arrays(rows, out_png, {0: "background", **labels}, title=title)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_range("--seed", args.seed, 0)
    check_range("--threads", args.threads, 1)
    check_range("--samples-per-class", args.samples_per_class, 1)
    check_range("--fraction-seed", args.fraction_seed, 0)
    import torch

    from medgmae_plans.datasets import resolve_dataset
    from medgmae_plans.runtime.paths import ensure_nnunet_env
    from medgmae_trainers.finetune.cli import _fold, _plans
    from medgmae_trainers.finetune.encoder_loading import check_fits, read_pretrained
    from medgmae_trainers.finetune.fractions import parse_fraction
    from medgmae_trainers.finetune.run_record import Settings
    from medgmae_trainers.pretrain.pretrained import load_pretrained
    from medgmae_trainers.networks.vit import ViT3D
    from medgmae_trainers.probe.cases import load_preprocessed, preprocess_raw, probe_cases
    from medgmae_trainers.probe.features import EncoderFeatures, RawPatches

    start = time.time()
    fraction = DEFAULT_FRACTION if args.fraction is None else parse_fraction(args.fraction)
    fold = 0 if args.fold is None else _fold(args.fold)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = ensure_nnunet_env()
    dataset = resolve_dataset(args.dataset)
    if args.configuration not in CONFIGURATIONS:
        raise UserError(f"-c {args.configuration}: not a configuration; expected one of {sorted(CONFIGURATIONS)}")
    plans = _plans(folders, dataset, args.configuration)
    preprocessed = folders["nnUNet_preprocessed"] / dataset
    plans_file = preprocessed / f"{Settings.plans}.json"
    pre = read_pretrained(args.checkpoint)
    check_fits(pre, plans, args.configuration)
    config = plans["configurations"][args.configuration]
    data = preprocessed / config["data_identifier"]
    dataset_json_file = preprocessed / "dataset.json"
    all_labels = read_dataset_labels(dataset_json_file)
    labels = {k: v for k, v in all_labels.items() if k > 0}
    if not labels:
        raise UserError(f"{dataset_json_file}: no foreground labels to probe")
    n_classes = max(all_labels) + 1
    dataset_json = json.loads(dataset_json_file.read_text())
    fraction_seed = Settings.fraction_seed if args.fraction_seed is None else args.fraction_seed
    split = probe_cases(preprocessed, data, fold, fraction, fraction_seed)
    test = _test_pairs(folders["nnUNet_raw"] / dataset, file_ending_of(dataset_json_file))
    out = Path(args.out) if args.out else _default_out(folders["nnUNet_results"], dataset, pre.path, args.random_init,
                                                       args.configuration, fold, fraction, args.seed)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    log = setup_run_log(out, "medgmae_probe", args.verbose)
    key = {"dataset": dataset, "configuration": args.configuration, "random_init": args.random_init, "fold": fold,
           "fraction": fraction, "fraction_seed": fraction_seed, "seed": args.seed,
           "samples_per_class": args.samples_per_class, "device": device}
    inputs = json.loads(json.dumps(_inputs(key, pre.path, data, test)))  # as it reads back from the file
    reused = None if args.force else _reusable(out / PROBE_JSON, inputs)
    if reused is not None:
        log.info(f"{out / PROBE_JSON}: made from the same checkpoint, cases and settings; reused "
                 f"(mean Dice {reused['mean_dice']:.4f}, raw {reused['baselines']['raw']['mean_dice']:.4f}); "
                 f"--force probes again")
        return 0
    log.info(f"{dataset} {args.configuration} fold {fold}: fitting on {len(split.train)} of {split.fold_train} "
             f"training cases (fraction {fraction:g}), L2 chosen on {len(split.val)} validation cases, scored on "
             + (f"{len(test)} test cases" if test else "the validation cases (the dataset has no labelsTs)"))

    train = load_preprocessed(data, split.train)
    val = load_preprocessed(data, split.val)
    scored = ([preprocess_raw(case, [image], label, plans, args.configuration, dataset_json)
               for case, image, label in test] if test else val)
    log.info(f"cases read ({time.time() - start:.1f} s)")

    if args.random_init:
        torch.manual_seed(args.seed)
    encoder = ViT3D(**pre.encoder_config)
    if not args.random_init:
        load_pretrained(encoder, pre)
    window = _window(plans, args.configuration, plans_file)
    features = EncoderFeatures(encoder, window, device)
    features.name = "random-init" if args.random_init else "pretrained"
    raw = RawPatches(features.stride, features.width, device)
    probed = [probe_representation(rep, train, val, scored, labels, n_classes, args.seed, args.samples_per_class, log)
              for rep in (features, raw)]
    wall = round(time.time() - start, 1)

    scored_on = "test" if test else "validation"
    dice, mean = label_dice(probed[0].summary, labels)
    raw_dice, raw_mean = label_dice(probed[1].summary, labels)
    settings = {
        "dataset": dataset, "configuration": args.configuration, "checkpoint": str(pre.path),
        "init": features.name, "fold": fold, "fraction": fraction, "fraction_seed": fraction_seed, "seed": args.seed,
        "train_cases": split.train, "validation_cases": split.val, "fold_training_cases": split.fold_train,
        "window": window, "window_step": window // 2, "token_stride": features.stride,
        "skip_blocks": list(features.taps), "features": {p.name: p.width for p in probed},
        "samples_per_class": args.samples_per_class, "grid": "preprocessed",
        "l2_by_validation": {p.name: p.l2_by_validation for p in probed}, "l2": {p.name: p.l2 for p in probed},
        "device": device, "threads": torch.get_num_threads(), "wall_s": wall,
    }
    result = {"scored_on": scored_on, "cases": [c.name for c in scored], "dice": dice, "mean_dice": mean,
              "baselines": {"raw": {"dice": raw_dice, "mean_dice": raw_mean}}, "settings": settings,
              "inputs": inputs}
    spacing = [float(s) for s in config["spacing"]]
    overlay = _overlay(scored[:OVERLAY_CASES], probed[0].segmentations[:OVERLAY_CASES], out / OVERLAY_PNG, labels,
                       spacing, f"{features.name} encoder probe on {scored_on} cases: outlines over the ground truth",
                       dataset_json.get("overwrite_image_reader_writer") == "SimpleITKIOWithReorient")
    write_run_json(out, "medgmae_probe", {k: v for k, v in vars(args).items() if k not in ("no_pbar", "verbose")},
                   {"probe_json": str(out / PROBE_JSON), "overlay": str(overlay), "mean_dice": mean,
                    "raw_mean_dice": raw_mean, "wall_s": wall})
    write_json_atomic(out / PROBE_JSON, result)  # last: a probe.json that matches its inputs is a finished run
    print(_table(probed, labels, scored_on))
    log.info(f"done in {wall} s; {out / PROBE_JSON}, {overlay}")
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
