"""`medgmae_probe`: what a pretrained encoder has learned, measured in minutes by a frozen linear probe.

    medgmae_probe -d DATASET -c CONFIGURATION --checkpoint CKPT [CKPT ...] [--random-init] [--fold 0]
                  [--fraction F [F ...]] [--seed 0] [-o OUT]

The checkpoint's encoder (or, with `--random-init`, its architecture with fresh weights) is run
frozen over sliding windows of every case; its features (`medgmae_trainers.probe.features`) feed a
class-balanced linear softmax fitted on the fold's training cases of the fraction (the cases
`medgmae_train` trains on), with its L2 weight chosen on the fold's validation cases, and the probe's
segmentation is scored with Dice per organ on the test cases (`imagesTs`/`labelsTs`) when the dataset
has them, else on the validation cases. Raw intensities in token-sized patches, reduced by PCA to
the same width, go through the same fit in the same run: the baseline. Everything is on the
configuration's preprocessed grid. The command lives in `evaluation` because it scores with
`metrics` and `summary`; the features and the fit are in `medgmae_trainers/probe/`.

Several checkpoints of one architecture (a learning curve) and several fractions are probed in one
run, every (checkpoint, fraction) pair, reading the cases once (`probe_pairs`: the loop, the pairs'
files, skipping pairs already done). This module checks the input, lays out the output and reads
the cases.
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
import json
import math
import time
from pathlib import Path
from typing import Sequence

from medgmae_plans.configurations import CONFIGURATIONS
from medgmae_plans.runtime import (UserError, add_common_flags, check_range, check_writable, cli_entry, setup_run_log,
                                   write_run_json)

from .folders import file_ending_of, read_dataset_labels
from .probe_pairs import (OVERLAY_PNG, PENDING, PROBE_JSON, RUNS_JSON, Pair, ProbeContext, mark_finished, pair_folder,
                          run_pairs)
from .test_cases import test_cases

DEFAULT_FRACTION = 0.1


def build_parser() -> argparse.ArgumentParser:
    from medgmae_trainers.probe.linear import L2_WEIGHTS, PER_CLASS

    p = argparse.ArgumentParser(
        prog="medgmae_probe",
        description="Frozen-encoder linear probe: the encoder's UNETR skips and final tokens over sliding windows, "
                    "a class-balanced linear softmax fitted on the fold's training cases of the fraction (L2 "
                    f"weight from {', '.join(f'{w:g}' for w in L2_WEIGHTS)} chosen on its validation cases), Dice "
                    "per organ on the test cases (else the validation cases); raw intensities in token-sized "
                    "patches (PCA to the same width) as the baseline in the same run. One checkpoint and one "
                    "fraction write OUT/probe.json; several write OUT/<checkpoint file stem>_f<pct>/probe.json "
                    "per (checkpoint, fraction) pair and OUT/probe_runs.json, reading the cases once and fitting "
                    "the baseline once per fraction. A pair whose probe.json holds the same settings is skipped, "
                    "so a stopped run continues where it stopped.")
    p.add_argument("-d", "--dataset", required=True, help="dataset id, name or alias (as medgmae_train)")
    p.add_argument("-c", "--configuration", required=True,
                   help="plans configuration: " + ", ".join(CONFIGURATIONS))
    p.add_argument("--checkpoint", required=True, nargs="+", metavar="CKPT",
                   help="medgmae_pretrain checkpoint_final.pt or checkpoint_step_<N>.pt; several (e.g. a learning "
                        "curve of one run) must share the encoder architecture and differ in file name")
    p.add_argument("--random-init", action="store_true",
                   help="the checkpoint's architecture with fresh weights (drawn with --seed): the scratch "
                        "representation; takes exactly one --checkpoint")
    p.add_argument("--fold", help="cross-validation fold 0..4 or 'all', as medgmae_train (default 0)")
    p.add_argument("--fraction", nargs="+", metavar="F",
                   help=f"fraction(s) of the fold's training cases the probe is fitted on, each in (0, 1]: the "
                        f"nested subsets of medgmae_train (default {DEFAULT_FRACTION:g})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the training voxels drawn and of --random-init's weights, >= 0 (default 0)")
    p.add_argument("--fraction-seed", type=int,
                   help="seed of the fraction's shuffle, as medgmae_train's (default: medgmae_train's default)")
    p.add_argument("--samples-per-class", type=int, default=PER_CLASS,
                   help=f"training voxels per class over the training cases, >= 1 (default {PER_CLASS})")
    p.add_argument("-o", "--out", help="output folder (default: $nnUNet_results/<Dataset>/MedGMAE_probe/"
                                       "<first checkpoint's folder>__<pretrained|random>__<configuration>__fold<k>"
                                       "_f<pct>_s<seed>, without _f<pct> when several fractions are given)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--threads", type=int, help="torch threads on a CPU, >= 1 (default: torch's)")
    return add_common_flags(p)


def _fractions(values: Sequence[str] | None) -> list[float]:
    """The --fraction values in their order; two with the same tag would write one pair's folder twice."""
    from medgmae_trainers.finetune.fractions import fraction_tag, parse_fraction

    fractions, tags = [], {}
    for value in values or [DEFAULT_FRACTION]:
        fraction = parse_fraction(value)
        tag = fraction_tag(fraction)
        if tag in tags:
            raise UserError(f"--fraction {value}: given twice (as {tags[tag]}, both {tag})")
        tags[tag] = value
        fractions.append(fraction)
    return fractions


def _checkpoints(paths: Sequence[str], random_init: bool, plans: dict, configuration: str) -> list:
    """The checkpoints read and checked: each fits the data; all share the first one's encoder (one
    architecture, so one raw baseline serves them) and differ in file stem (their pairs' folders)."""
    from medgmae_trainers.finetune.encoder_loading import check_fits, read_pretrained

    if random_init and len(paths) > 1:
        raise UserError(f"--random-init takes exactly one --checkpoint (the architecture to draw), got {len(paths)}")
    checkpoints, by_stem = [], {}
    for path in paths:
        pre = read_pretrained(path)
        check_fits(pre, plans, configuration)
        first = checkpoints[0] if checkpoints else pre
        differs = sorted(k for k in set(pre.encoder_config) | set(first.encoder_config)
                         if pre.encoder_config.get(k) != first.encoder_config.get(k))
        if differs:
            k = differs[0]
            raise UserError(f"{pre.path}: encoder {k} {pre.encoder_config.get(k)!r}, but {first.path.name}'s is "
                            f"{first.encoder_config.get(k)!r}; --checkpoint takes checkpoints of one architecture")
        if pre.path.stem in by_stem:
            raise UserError(f"{pre.path}: the same file name as {by_stem[pre.path.stem]}; each checkpoint's pairs "
                            f"go to OUT/<file stem>_f<pct>, so several checkpoints need different names")
        by_stem[pre.path.stem] = pre.path
        checkpoints.append(pre)
    return checkpoints


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
                 fractions: Sequence[float], seed: int) -> Path:
    """Named after the first checkpoint's run folder; with several fractions the pairs' folders name them."""
    from medgmae_trainers.finetune.fractions import fraction_tag

    init = "random" if random_init else "pretrained"
    pct = f"_{fraction_tag(fractions[0])}" if len(fractions) == 1 else ""
    return (results / dataset / "MedGMAE_probe"
            / f"{checkpoint.parent.name}__{init}__{configuration}__fold{fold}{pct}_s{seed}")


def _read_cases(ctx: ProbeContext, pairs: Sequence[Pair], data: Path, test, plans: dict, configuration: str,
                dataset_json: dict) -> None:
    """Read, once, the cases the pending pairs need: the union of their fractions' training cases (nested, so
    the largest fraction's), the validation cases, and the test cases (preprocessed from raw in memory)."""
    from medgmae_trainers.probe.cases import load_preprocessed, preprocess_raw

    names = list(dict.fromkeys(n for p in pairs if p.state == PENDING for n in ctx.splits[p.fraction].train))
    ctx.train_cases = {c.name: c for c in load_preprocessed(data, names)}
    ctx.val = load_preprocessed(data, next(iter(ctx.splits.values())).val)
    ctx.scored = ([preprocess_raw(case, [image], label, plans, configuration, dataset_json)
                   for case, image, label in test] if test else ctx.val)


def _table(result: dict, labels: dict[int, str]) -> str:
    """A pair's Dice per label, the encoder beside the raw baseline."""
    l2 = result["settings"]["l2"]
    columns = [(result["settings"]["init"], result["dice"], result["mean_dice"]),
               ("raw", result["baselines"]["raw"]["dice"], result["baselines"]["raw"]["mean_dice"])]
    widths = [max(10, len(name)) for name, _, _ in columns]
    lines = [f"Dice on the {result['scored_on']} cases (probe L2 " + ", ".join(f"{n} {l2[n]:g}" for n, _, _ in columns)
             + ")", f"{'label':>24}" + "".join(f"  {n:>{w}}" for (n, _, _), w in zip(columns, widths))]
    for label, name in labels.items():
        lines.append(f"{f'{label} {name}':>24}" + "".join(f"  {_num(d[name]):{w}.4f}"
                                                         for (_, d, _), w in zip(columns, widths)))
    lines.append(f"{'mean':>24}" + "".join(f"  {_num(m):{w}.4f}" for (_, _, m), w in zip(columns, widths)))
    return "\n".join(lines)


def _pairs_table(pairs: Sequence[Pair]) -> str:
    """One line per pair: its mean Dice and L2, the raw baseline's, and whether it was probed now."""
    lines = [f"{'pair':<36} {'mean Dice':>10} {'L2':>7} {'raw':>10} {'raw L2':>7}  state"]
    for pair in pairs:
        r = pair.result
        init, l2 = r["settings"]["init"], r["settings"]["l2"]
        lines.append(f"{pair.folder.name:<36} {_num(r['mean_dice']):10.4f} {l2[init]:7g} "
                     f"{_num(r['baselines']['raw']['mean_dice']):10.4f} {l2['raw']:7g}  {pair.state}")
    return "\n".join(lines)


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _main(argv: Sequence[str] | None) -> int:
    start = time.time()
    args = build_parser().parse_args(argv)
    check_range("--seed", args.seed, 0)
    check_range("--threads", args.threads, 1)
    check_range("--samples-per-class", args.samples_per_class, 1)
    check_range("--fraction-seed", args.fraction_seed, 0)
    import torch

    from medgmae_plans.datasets import resolve_dataset
    from medgmae_plans.runtime.locks import hold_folder
    from medgmae_plans.runtime.paths import ensure_nnunet_env
    from medgmae_trainers.finetune.cli import parse_fold, read_plans
    from medgmae_trainers.finetune.run_record import Settings
    from medgmae_trainers.probe.cases import probe_cases
    from medgmae_trainers.probe.linear import L2_WEIGHTS

    fractions = _fractions(args.fraction)
    fold = 0 if args.fold is None else parse_fold(args.fold)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = ensure_nnunet_env()
    dataset = resolve_dataset(args.dataset)
    if args.configuration not in CONFIGURATIONS:
        raise UserError(f"-c {args.configuration}: not a configuration; expected one of {sorted(CONFIGURATIONS)}")
    plans = read_plans(folders, dataset, args.configuration)
    preprocessed = folders["nnUNet_preprocessed"] / dataset
    checkpoints = _checkpoints(args.checkpoint, args.random_init, plans, args.configuration)
    config = plans["configurations"][args.configuration]
    data = preprocessed / config["data_identifier"]
    dataset_json_file = preprocessed / "dataset.json"
    all_labels = read_dataset_labels(dataset_json_file)
    labels = {k: v for k, v in all_labels.items() if k > 0}
    if not labels:
        raise UserError(f"{dataset_json_file}: no foreground labels to probe")
    dataset_json = json.loads(dataset_json_file.read_text(encoding="utf-8"))
    fraction_seed = Settings.fraction_seed if args.fraction_seed is None else args.fraction_seed
    splits = {f: probe_cases(preprocessed, data, fold, f, fraction_seed) for f in fractions}
    test = _test_pairs(folders["nnUNet_raw"] / dataset, file_ending_of(dataset_json_file))
    out = Path(args.out) if args.out else _default_out(folders["nnUNet_results"], dataset, checkpoints[0].path,
                                                       args.random_init, args.configuration, fold, fractions, args.seed)
    check_writable(out)
    hold_folder(out, "medgmae_probe")  # one writer: two runs would probe the same pending pairs
    log = setup_run_log(out, "medgmae_probe", args.verbose)

    several = len(checkpoints) * len(fractions) > 1
    pairs = [Pair(pre, f, pair_folder(out, pre.path, f) if several else out) for pre in checkpoints for f in fractions]
    common = {"dataset": dataset, "configuration": args.configuration, "fold": fold,
              "init": "random-init" if args.random_init else "pretrained", "fraction_seed": fraction_seed,
              "seed": args.seed, "samples_per_class": args.samples_per_class, "l2_grid": list(L2_WEIGHTS)}
    ctx = ProbeContext(common=common, labels=labels, n_classes=max(all_labels) + 1,
                       window=_window(plans, args.configuration, preprocessed / f"{Settings.plans}.json"),
                       device=device, splits=splits, scored_on="test" if test else "validation",
                       spacing=[float(s) for s in config["spacing"]], log=log, start=start,
                       ras=dataset_json.get("overwrite_image_reader_writer") == "SimpleITKIOWithReorient")
    for f, split in splits.items():
        log.info(f"{dataset} {args.configuration} fold {fold}: fraction {f:g} fits on {len(split.train)} of "
                 f"{split.fold_train} training cases, L2 chosen on {len(split.val)} validation cases, scored on "
                 + (f"{len(test)} test cases" if test else "the validation cases (the dataset has no labelsTs)"))
    mark_finished(ctx, pairs)
    if any(p.state == PENDING for p in pairs):
        _read_cases(ctx, pairs, data, test, plans, args.configuration, dataset_json)
        log.info(f"cases read ({time.time() - ctx.start:.1f} s)")
    run_pairs(ctx, pairs, out / RUNS_JSON if several else None)
    _report(out, args, pairs, labels, several, round(time.time() - start, 1), log)
    return 0


def _report(out: Path, args, pairs: Sequence[Pair], labels: dict[int, str], several: bool, wall: float, log) -> None:
    """Print the Dice table (per organ for one pair, one line per pair for several) and write the run's JSON."""
    if several:
        results = {"probe_runs": str(out / RUNS_JSON), "probe_jsons": [str(p.json) for p in pairs], "wall_s": wall}
        print(_pairs_table(pairs))
    else:
        result = pairs[0].result
        results = {"probe_json": str(out / PROBE_JSON), "overlay": str(out / OVERLAY_PNG),
                   "mean_dice": result["mean_dice"], "raw_mean_dice": result["baselines"]["raw"]["mean_dice"],
                   "state": pairs[0].state, "wall_s": wall}
        print(_table(result, labels))
    write_run_json(out, "medgmae_probe", {k: v for k, v in vars(args).items() if k not in ("no_pbar", "verbose")},
                   results)
    log.info(f"done in {wall} s; " + str(out / (RUNS_JSON if several else PROBE_JSON)))


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
