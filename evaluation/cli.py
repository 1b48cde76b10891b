"""`medgmae_evaluate`: Dice and NSD per organ of fine-tuning runs or of any two folders, and Table 1.

    medgmae_evaluate RESULTS_FOLDER [...] [--test] [--compare] [-o OUT_DIR] [-l 1 2 ...] [-np N]
    medgmae_evaluate --ref GT_DIR --pred PRED_DIR [-l 1 2 ...] [-o OUT.json] [--chill]

RESULTS_FOLDER is a fold folder, a trainer folder, a dataset folder of `$nnUNet_results` (or its id,
name or alias, e.g. `Phantom`), or the whole `$nnUNet_results`: every fold holding
`medgmae_finetune.json` below it is evaluated on its validation predictions against nnU-Net's
`gt_segmentations`, and gets `validation/summary_medgmae.json` beside nnU-Net's own summary.json.
With `--test` each run predicts its dataset's held-out test cases (`imagesTs`) with its final
checkpoint instead and is scored on them against `labelsTs` (see `test_cases`): the report's numbers.
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

from medgmae_plans.runtime.atomic import write_text_atomic
from medgmae_plans.runtime import (UserError, add_common_flags, check_range, check_writable, cli_entry, setup_run_log,
                                   write_run_json)

from .folders import (detect_ending, file_ending_of, find_runs, image_for_case, pair_cases, read_dataset_labels,
                      select_labels)
from .metrics import NSD_TOLERANCE_MM
from .summary import (SUMMARY_NAME, evaluate_pairs, input_stamps, load_if_current, summarise, write_summary)

DEFAULT_OUT = "medgmae_evaluation"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medgmae_evaluate",
        description="Dice and normalised surface Dice (NSD) per organ, per case and summarised in nnU-Net's "
                    "summary.json layout, for the validation predictions of MedGMAE fine-tuning runs or for any "
                    "reference/prediction folder pair; --compare lays runs out as the paper's Table 1.")
    p.add_argument("results", nargs="*", metavar="RESULTS_FOLDER",
                   help="fold, trainer or dataset folder of nnUNet_results (or a dataset id/name/alias)")
    p.add_argument("--ref", metavar="GT_DIR", help="folder of reference label maps (with --pred)")
    p.add_argument("--pred", metavar="PRED_DIR", help="folder of predicted label maps (with --ref)")
    p.add_argument("-l", "--labels", type=int, nargs="+", metavar="ID",
                   help="foreground label ids to evaluate, each >= 1 (default: every label of dataset.json)")
    p.add_argument("--dataset-json", metavar="FILE", help="with --ref/--pred: the dataset.json naming the labels "
                   "(default: looked for beside the folders)")
    p.add_argument("-o", "--out", metavar="PATH",
                   help=f"with --ref/--pred: the summary JSON (default PRED_DIR/{SUMMARY_NAME}); with results "
                        f"folders: the folder for the log, run JSON and --compare outputs (default ./{DEFAULT_OUT})")
    p.add_argument("--test", action="store_true",
                   help="score each run on its dataset's test cases (imagesTs/labelsTs), predicted with the run's "
                        "final checkpoint (reused until it or the images change), instead of its validation cases")
    p.add_argument("--compare", action="store_true", help="write Table 1 (CSV, Markdown, PNG) and per-organ tables")
    p.add_argument("--overlays", type=int, metavar="N", help="with --compare: per trainer, a PNG of its first fold's "
                   "first N >= 0 validation cases, predictions over the ground truth (default 2; 0 for none)")
    p.add_argument("--tolerance", type=float, default=NSD_TOLERANCE_MM, help="NSD tolerance in mm, >= 0 (default 1)")
    p.add_argument("--no-nsd", action="store_true",
                   help="Dice only: NSD is left out (NaN). MONAI's surface Dice can take minutes per case on a "
                        "CPU when predictions are scattered, as those of a barely trained model are")
    p.add_argument("--chill", action="store_true",
                   help="with --ref/--pred: evaluate the predictions present even if references lack one")
    p.add_argument("--force", action="store_true", help="recompute summaries that are up to date")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="processes over cases, >= 1 (default 1)")
    return add_common_flags(p)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_range("--tolerance", args.tolerance, 0)  # NaN or infinity would score every organ NaN
    check_range("-np", args.num_processes, 1)
    check_range("--overlays", args.overlays, 0)
    if args.no_nsd:
        args.tolerance = math.nan  # case_metrics skips NSD; such summaries are never reused as NSD ones
    if args.ref or args.pred:
        if not (args.ref and args.pred):
            raise UserError("--ref and --pred go together")
        if args.results or args.compare or args.test:
            raise UserError("give either RESULTS_FOLDER(s) (with --test or --compare) or --ref/--pred, not both")
        return evaluate_two_folders(args)
    if not args.results:
        raise UserError("give RESULTS_FOLDER(s), or --ref GT_DIR --pred PRED_DIR")
    return evaluate_results(args)


# ---------------------------------------------------------------- --ref / --pred

def _find_dataset_json(args) -> Path | None:
    if args.dataset_json:
        path = Path(args.dataset_json)
        if not path.is_file():
            raise UserError(f"{path}: --dataset-json file does not exist")
        return path
    pred, ref = Path(args.pred), Path(args.ref)
    for folder in (pred, pred.parent, pred.parent.parent, ref, ref.parent):
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    return None


def evaluate_two_folders(args) -> int:
    ref_dir, pred_dir = Path(args.ref), Path(args.pred)
    for folder, what in ((ref_dir, "--ref"), (pred_dir, "--pred")):
        if not folder.is_dir():
            raise UserError(f"{folder}: {what} folder does not exist")
    dataset_json = _find_dataset_json(args)
    declared = read_dataset_labels(dataset_json) if dataset_json else None
    labels = select_labels(declared, args.labels, str(dataset_json))
    ending = file_ending_of(dataset_json) if dataset_json else detect_ending(ref_dir)
    pairs = pair_cases(ref_dir, pred_dir, ending, chill=args.chill)
    out = Path(args.out) if args.out else pred_dir / SUMMARY_NAME
    if out.suffix != ".json":
        raise UserError(f"{out}: the summary file must end in .json")
    check_writable(out.parent)
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(out.parent, "medgmae_evaluate")  # one writer per output folder
    start = time.time()
    per_case = evaluate_pairs(pairs, list(labels), list(declared) if declared else None, args.tolerance,
                              args.num_processes, not args.no_pbar, desc="evaluate")
    log = setup_run_log(out.parent, "medgmae_evaluate", args.verbose)  # after the inputs passed their checks
    log.info(f"{len(pairs)} case(s), {len(labels)} label(s)" + (f" from {dataset_json}" if dataset_json else ""))
    summary = summarise(per_case, labels, args.tolerance, input_stamps(pairs))
    write_summary(summary, out)
    log.info(_summary_table(summary, labels))
    log.info(f"wrote {out} ({time.time() - start:.1f} s)")
    write_run_json(out.parent, "medgmae_evaluate", _settings(args, labels),
                   {"summary": str(out), "foreground_mean": summary["foreground_mean"], "cases": len(pairs)})
    return 0


# ---------------------------------------------------------------- results folders

def _resolve_results(items: Sequence[str]) -> list[Path]:
    from medgmae_plans.datasets import resolve_dataset
    from medgmae_plans.runtime.paths import nnunet_folder

    folders = []
    for item in items:
        path = Path(item)
        if path.exists():
            folders.append(path)
            continue
        results = nnunet_folder("nnUNet_results")
        try:
            folders.append(results / resolve_dataset(item, roots=[results]))
        except UserError as err:
            raise UserError(f"{item}: no such results folder, and not a dataset in {results} ({err})") from None
    return folders


def evaluate_results(args) -> int:
    from medgmae_plans.runtime.paths import ensure_nnunet_env

    from .compare import Scored, build_comparison, table_markdown
    from .intervals import in_words, versus_scratch

    env = ensure_nnunet_env()
    runs = find_runs(_resolve_results(args.results))
    out_dir = check_writable(Path(args.out or DEFAULT_OUT))
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(out_dir, "medgmae_evaluate")  # one writer per output folder
    log = setup_run_log(out_dir, "medgmae_evaluate", args.verbose)
    scored, skipped, lines = [], [], []
    for run in runs:
        if run.unfinished:
            skipped.append(run.label)
            log.warning(f"{run.label}: {run.unfinished} (training not finished?); skipped")
            continue
        summary, reused = evaluate_run(run, args, env, log)
        scored.append(Scored(run, summary))
        fg = summary["foreground_mean"]
        nsd = "" if math.isnan(args.tolerance) else f"NSD@{args.tolerance:g}mm {fg['NSD']:.4f}  "  # --no-nsd
        lines.append(f"{run.label}: Dice {fg['Dice']:.4f}  {nsd}"
                     f"({summary['medgmae']['num_cases']} cases{', reused' if reused else ''})")
        log.info(lines[-1])
    if not scored:
        raise UserError("no run has validation predictions to evaluate: " + ", ".join(skipped))
    results = {"cases": "test" if args.test else "validation",
               "runs": [{"run": s.run.label, "summary": s.summary["medgmae"]["summary_file"],
                         "dataset": s.run.dataset, "init": s.run.init, "fraction": s.run.fraction,
                         "fold": s.run.fold, "foreground_mean": s.summary["foreground_mean"]} for s in scored],
               "skipped": skipped}
    if args.compare:
        comp = build_comparison(scored)
        versus = versus_scratch(comp)
        files = write_comparison(comp, versus, out_dir)
        n_overlays = 2 if args.overlays is None else args.overlays
        if n_overlays > 0:
            files.update(write_overlays(scored, out_dir, n_overlays, env["nnUNet_raw"], env["nnUNet_preprocessed"],
                                        log))
        results["compare"] = {k: str(v) for k, v in files.items()}
        results["versus_scratch"] = [v.to_json() for v in versus]
        log.info("\n" + table_markdown(comp))
        if versus:
            log.info("paired bootstrap, each init minus scratch (cases resampled, replicates averaged):\n"
                     + "\n".join(in_words(versus)))
        log.info(f"comparison written to {out_dir}: " + ", ".join(sorted(files)))
    write_run_json(out_dir, "medgmae_evaluate", _settings(args, None), results)
    return 0


def evaluate_run(run, args, env: dict, log) -> tuple[dict, bool]:
    """The run's summary on its validation or (--test) test cases, reused when its inputs and settings
    are unchanged, and whether it was reused."""
    dataset_json = run.dataset_json(env["nnUNet_preprocessed"])
    declared = read_dataset_labels(dataset_json)
    labels = select_labels(declared, args.labels, str(dataset_json))
    ending = file_ending_of(dataset_json)
    if args.test:
        from .test_cases import predict_test_cases, test_cases, test_folders

        _, ref_dir = test_folders(run, env["nnUNet_raw"])
        pred_dir = predict_test_cases(run, env["nnUNet_raw"], not args.no_pbar, log)
        expected = test_cases(ref_dir, ending)
    else:
        ref_dir, pred_dir, expected = run.reference_dir(env["nnUNet_preprocessed"]), run.validation_dir, run.val_cases
        if not ref_dir.is_dir():
            raise UserError(f"{ref_dir}: reference folder of {run.label} does not exist "
                            f"(nnU-Net's preprocessing writes gt_segmentations there)")
    pairs = pair_cases(ref_dir, pred_dir, ending, expected=expected)
    stamps = input_stamps(pairs)
    out = pred_dir / SUMMARY_NAME
    if not args.force:
        cached = load_if_current(out, labels, args.tolerance, stamps)
        if cached is not None:
            return _with_file(cached, out), True
    per_case = evaluate_pairs(pairs, list(labels), list(declared), args.tolerance, args.num_processes,
                              not args.no_pbar, desc=f"{run.trainer} fold {run.fold}")
    summary = summarise(per_case, labels, args.tolerance, stamps)
    write_summary(summary, out)
    return _with_file(summary, out), False


def _with_file(summary: dict, path: Path) -> dict:
    summary["medgmae"]["summary_file"] = str(path)
    return summary


def write_comparison(comp, versus, out_dir: Path, title: str = "") -> dict[str, Path]:
    """table1.md (Dice and NSD tables, each pretrained init against scratch, then the per-organ tables),
    table1.csv, table1_nsd.csv, replicates.csv, versus_scratch.csv, per_organ.csv, per_organ.md and the
    Dice chart table1.png of a `compare.Comparison` and its `intervals.versus_scratch`, each written
    atomically."""
    from .compare import per_organ_csv, per_organ_markdown, replicates_csv, table_csv, table_markdown
    from .intervals import intervals_csv, intervals_markdown
    from .plots import dice_chart

    out_dir = Path(out_dir)
    files = {name: out_dir / name for name in
             ("table1.md", "table1.csv", "table1_nsd.csv", "replicates.csv", "versus_scratch.csv", "per_organ.csv",
              "per_organ.md", "table1.png")}
    heading = f"# {title}\n\n" if title else ""
    note = ("Rows: initialisation; columns: dataset and fraction of the training cases. Mean over organs "
            "and cases, averaged over folds, then over replicates (± the sd over replicates where a cell has "
            "several). **bold**: best, <u>underlined</u>: second.\n")
    pairs = "\n## Each init minus Scratch: paired bootstrap\n\n" + intervals_markdown(versus) if versus else ""
    write_text_atomic(files["table1.md"], heading + note + "\n" + table_markdown(comp, "dice") + pairs + "\n"
                      + table_markdown(comp, "nsd"))
    write_text_atomic(files["table1.csv"], table_csv(comp, "dice"))
    write_text_atomic(files["table1_nsd.csv"], table_csv(comp, "nsd"))
    write_text_atomic(files["replicates.csv"], replicates_csv(comp))
    write_text_atomic(files["versus_scratch.csv"], intervals_csv(versus))
    write_text_atomic(files["per_organ.csv"], per_organ_csv(comp))
    write_text_atomic(files["per_organ.md"], per_organ_markdown(comp))
    dice_chart(comp, files["table1.png"], title=title)
    return files


def write_overlays(scored, out_dir: Path, n_cases: int, raw_root: Path, preprocessed_root: Path, log) -> dict:
    """`overlays_<trainer>.png` for the first fold of each trainer: its first `n_cases` validation cases."""
    from .plots import OverlayCase, prediction_overlays

    files, done = {}, set()
    for item in scored:
        run = item.run
        key = (run.dataset, run.trainer)
        if key in done:
            continue
        done.add(key)
        ending = file_ending_of(run.dataset_json(preprocessed_root))
        cases = []
        for entry in item.summary["metric_per_case"][:n_cases]:
            pred = Path(entry["prediction_file"])
            case = pred.name[: -len(ending)]
            image = image_for_case(raw_root, run.dataset, case, ending)
            if image is None:
                log.warning(f"{run.label}: no raw image for {case} in {raw_root / run.dataset}; no overlay")
                continue
            cases.append(OverlayCase(case, image, Path(entry["reference_file"]), pred))
        if not cases:
            continue
        names = {int(k): v for k, v in item.summary["medgmae"]["labels"].items()}
        name = f"overlays_{run.dataset}_{run.trainer}.png" if len({s.run.dataset for s in scored}) > 1 \
            else f"overlays_{run.trainer}.png"
        path = prediction_overlays(cases, out_dir / name, names,
                                   title=f"{run.trainer} fold {run.fold}: prediction outlines over the ground truth")
        files[name] = path
    return files


# ---------------------------------------------------------------- output helpers

def _settings(args, labels) -> dict:
    settings = {k: v for k, v in vars(args).items() if k not in ("no_pbar", "verbose")}
    if labels is not None:
        settings["labels_evaluated"] = {str(k): v for k, v in labels.items()}
    return json.loads(json.dumps(settings, default=str))


def _summary_table(summary: dict, labels: dict[int, str]) -> str:
    lines = [f"{'label':>24}  {'Dice':>7}  {'NSD':>7}"]
    for label, name in labels.items():
        mean = summary["mean"][str(label)]
        lines.append(f"{f'{label} {name}':>24}  {mean['Dice']:7.4f}  {mean['NSD']:7.4f}")
    fg = summary["foreground_mean"]
    lines.append(f"{'foreground mean':>24}  {fg['Dice']:7.4f}  {fg['NSD']:7.4f}")
    return "\n".join(lines)


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
