"""medgmae_classify {train,predict,evaluate,convert}: multi-label abnormality classification (CT-RATE task)."""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
from pathlib import Path

from medgmae_plans.runtime.paths import nnunet_folder
from medgmae_plans.runtime import (UserError, add_common_flags, check_range, check_writable, cli_entry, setup_run_log,
                                   write_run_json)

from preprocessing.layouts.classification import LABELS_CSV, SPLITS, LabelTable, read_labels

from .data import Geometry, ensure_preprocessed, preprocessed_folder


def _geometry_flags(p: argparse.ArgumentParser) -> None:
    g = Geometry()
    p.add_argument("--spacing-xyz", type=float, nargs=3, default=list(reversed(g.spacing_zyx)), metavar=("X", "Y", "Z"),
                   help="target spacing in mm, > 0 (default the paper's 1.5 1.5 3.0)")
    p.add_argument("--size-xyz", type=int, nargs=3, default=list(reversed(g.size_zyx)), metavar=("X", "Y", "Z"),
                   help="volume size after crop/pad, >= 1 (default the paper's 192 192 96)")
    p.add_argument("--hu-window", type=float, nargs=2, default=list(g.hu_window), metavar=("LO", "HI"),
                   help="HU clipped to [LO, HI], LO < HI, and scaled to [0, 1] (default the paper's -1000 1000)")
    p.add_argument("-np", "--preprocess-workers", type=int, default=1, help="processes for preprocessing, >= 1")


def build_parser() -> argparse.ArgumentParser:
    from ..networks.presets import PRESETS
    from ..run import DEVICE_HELP
    from .trainer import TrainSettings as D  # the run defaults live there; the flags restate none of them

    p = argparse.ArgumentParser(prog="medgmae_classify", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune an encoder with a classification head")
    t.add_argument("dataset", help="dataset id, name or alias with classification_labels.csv (e.g. 991, PhantomFindings)")
    init = t.add_mutually_exclusive_group(required=True)
    init.add_argument("--pretrained", type=Path, help="pretraining checkpoint_final.pt")
    init.add_argument("--init", choices=["scratch"], help="random initialisation")
    t.add_argument("--preset", default=D.preset, choices=list(PRESETS),
                   help=f"encoder for --init scratch (default {D.preset})")
    t.add_argument("--fraction", type=float, default=D.fraction,
                   help=f"share of training cases, in (0, 1] (nested, seeded; default {D.fraction:g})")
    t.add_argument("--epochs", type=int, default=D.epochs, help=f">= 1 (default {D.epochs})")
    t.add_argument("--batch-size", type=int, default=D.batch_size, help=f">= 1 (default {D.batch_size})")
    t.add_argument("--lr", type=float, default=D.lr, help=f"> 0 (default {D.lr:g})")
    t.add_argument("--weight-decay", type=float, default=D.weight_decay, help=f">= 0 (default {D.weight_decay:g})")
    t.add_argument("--warmup-epochs", type=float, default=D.warmup_epochs, help=f">= 0 (default {D.warmup_epochs:g})")
    t.add_argument("--flip", type=float, default=D.flip,
                   help=f"left-right flip probability in training, in [0, 1] (default {D.flip:g})")
    t.add_argument("--seed", type=int, default=D.seed, help=f"random seed (default {D.seed})")
    t.add_argument("--device", default="auto", help=DEVICE_HELP)
    t.add_argument("--workers", type=int, default=D.workers,
                   help=f"DataLoader worker processes, >= 0 (default {D.workers})")
    t.add_argument("--val-every", type=int, default=D.val_every,
                   help=f"validate every N epochs, N >= 1 (default {D.val_every})")
    t.add_argument("--bootstrap", type=int, default=D.n_boot,
                   help=f"bootstrap resamples for the final evaluation, >= 1 (default {D.n_boot})")
    t.add_argument("--out", type=Path, help="run folder (default $nnUNet_results/MedGMAE_classify/<dataset>/<run>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint_latest.pt")
    _geometry_flags(t)
    add_common_flags(t)

    pr = sub.add_parser("predict", help="write per-case probabilities as CSV")
    pr.add_argument("dataset")
    pr.add_argument("--model", type=Path, required=True, help="training run folder or its checkpoint_final.pt")
    pr.add_argument("--split", default="valid", choices=[*SPLITS, "all"])
    pr.add_argument("--out", type=Path, help="CSV (default <model>/<split>/predictions.csv)")
    pr.add_argument("--device", default="auto", help=DEVICE_HELP)
    pr.add_argument("-np", "--preprocess-workers", type=int, default=1, help="processes for preprocessing, >= 1")
    add_common_flags(pr)

    e = sub.add_parser("evaluate", help="per-class and macro AUROC with a bootstrap 95%% interval")
    e.add_argument("predictions", type=Path, help="CSV from predict")
    e.add_argument("--labels", required=True, help="a labels CSV, or the dataset (its classification_labels.csv)")
    e.add_argument("--thresholds-from", type=Path,
                   help="predictions on ANOTHER set (e.g. the train split) to choose per-class thresholds on")
    e.add_argument("--out", type=Path, help="folder (default beside the predictions)")
    e.add_argument("--bootstrap", type=int, default=1000, help=">= 1")
    e.add_argument("--seed", type=int, default=0)
    add_common_flags(e)

    c = sub.add_parser("convert", help="CT-RATE's published layout -> Dataset992_CTRATE (labels + sources)")
    c.add_argument("source", type=Path, help="CT-RATE folder (holding dataset/ or its content)")
    c.add_argument("--dataset-id", type=int, default=992, help="1..999")
    c.add_argument("--overwrite", action="store_true")
    add_common_flags(c)
    return p


def _dataset(text: str) -> tuple[str, Path, LabelTable]:
    from medgmae_plans.datasets import resolve_dataset

    raw = nnunet_folder("nnUNet_raw")
    name = resolve_dataset(text, roots=[raw])
    labels = raw / name / LABELS_CSV
    if not labels.exists():
        raise UserError(f"{raw / name} has no {LABELS_CSV}: not a classification dataset "
                        "(make one with medgmae_make_phantom --findings or medgmae_classify convert)")
    return name, raw / name, read_labels(labels)


def _preprocess(name: str, raw: Path, table: LabelTable, geometry: Geometry, workers: int, pbar: bool, log) -> Path:
    folder = preprocessed_folder(nnunet_folder("nnUNet_preprocessed"), name, geometry)
    return ensure_preprocessed(raw, folder, table, geometry, workers=workers, pbar=pbar, log=log)


def _check_train_ranges(args) -> None:
    """Every numeric flag of `train`, before the dataset is preprocessed (the ranges --help states)."""
    check_range("--fraction", args.fraction, 0, 1, low_open=True)
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--workers", args.workers, 0), ("--val-every", args.val_every, 1),
                             ("--bootstrap", args.bootstrap, 1), ("--weight-decay", args.weight_decay, 0),
                             ("--warmup-epochs", args.warmup_epochs, 0), ("-np", args.preprocess_workers, 1)):
        check_range(flag, value, low)
    check_range("--lr", args.lr, 0, low_open=True)
    check_range("--flip", args.flip, 0, 1)
    for axis, (spacing, size) in zip("XYZ", zip(args.spacing_xyz, args.size_xyz)):
        check_range(f"--spacing-xyz {axis}", spacing, 0, low_open=True)
        check_range(f"--size-xyz {axis}", size, 1)
    if not args.hu_window[0] < args.hu_window[1]:
        raise UserError(f"--hu-window {args.hu_window[0]:g} {args.hu_window[1]:g}: LO must be below HI")


def _train(args) -> int:
    from ..run import resolve_device
    from .trainer import TrainSettings, train

    _check_train_ranges(args)
    if args.pretrained is not None and not args.pretrained.is_file():
        raise UserError(f"pretrained checkpoint {args.pretrained} does not exist")
    if args.pretrained is not None:  # read (safely) before the dataset is looked up or preprocessed
        from ..pretrain.checkpoint import load_checkpoint

        patch = load_checkpoint(args.pretrained).get("metadata", {}).get("patch_size")
    else:
        from ..networks import network_config

        patch = network_config(args.preset)["encoder"].get("patch_size")
    if patch and any(int(n) % int(patch) for n in args.size_xyz):  # else refused only after preprocessing
        raise UserError(f"--size-xyz {' '.join(map(str, args.size_xyz))}: each size must be a multiple of the "
                        f"encoder's ViT patch {patch}")
    name, raw, table = _dataset(args.dataset)
    geometry = Geometry(tuple(reversed(args.spacing_xyz)), tuple(reversed(args.size_xyz)), tuple(args.hu_window))
    run = f"{'pretrained_' + args.pretrained.parent.name if args.pretrained else 'scratch_' + args.preset}_f{args.fraction:g}"
    out = check_writable(args.out or nnunet_folder("nnUNet_results") / "MedGMAE_classify" / name / run)
    folder = _preprocess(name, raw, table, geometry, args.preprocess_workers, not args.no_pbar, print)
    s = TrainSettings(dataset=name, pretrained=str(args.pretrained.resolve()) if args.pretrained else None,
                      preset=args.preset, fraction=args.fraction, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, flip=args.flip,
                      seed=args.seed, device=str(resolve_device(args.device)), workers=args.workers,
                      val_every=args.val_every,
                      n_boot=args.bootstrap, geometry=geometry.to_json(), out=str(out), pbar=not args.no_pbar)
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(out, "medgmae_classify run")  # one writer per run folder
    results = train(s, table, folder, resume=args.resume)
    print(f"{out}: valid macro AUROC {results.get('val_macro_auroc')} (95% CI {results.get('val_macro_ci')})")
    return 0


def _predict(args) -> int:
    from ..run import resolve_device
    from .evaluate import write_predictions
    from .trainer import load_trained, predict_probs

    check_range("-np", args.preprocess_workers, 1)
    device = resolve_device(args.device)
    model, ckpt = load_trained(args.model, device)  # before the dataset is looked up or preprocessed
    name, raw, table = _dataset(args.dataset)
    if ckpt["classes"] != table.classes:
        raise UserError(f"{args.model}: trained on classes {ckpt['classes']}, {name} has {table.classes}")
    sub = table if args.split == "all" else table.subset(args.split)
    if not sub.cases:
        raise UserError(f"{name}: no cases in split {args.split!r}")
    geometry = Geometry.from_json(ckpt["geometry"])
    folder = _preprocess(name, raw, sub, geometry, args.preprocess_workers, not args.no_pbar, print)
    model_dir = args.model if args.model.is_dir() else args.model.parent
    out = args.out or model_dir / args.split / "predictions.csv"
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(out.parent, "medgmae_classify predict")  # one writer per output folder
    log = setup_run_log(out.parent, "predict", args.verbose)
    probs = predict_probs(model, folder, sub.cases, len(sub.classes), device, pbar=not args.no_pbar)
    write_predictions(out, sub.cases, sub.classes, probs)
    write_run_json(out.parent, "predict", {"dataset": name, "model": str(args.model), "split": args.split,
                                           "geometry": ckpt["geometry"]}, {"cases": len(sub.cases), "csv": str(out)})
    log.info(f"wrote {len(sub.cases)} cases to {out}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate

    if Path(args.labels).is_file() or args.labels.endswith(".csv"):
        table = read_labels(Path(args.labels))
    else:
        table = _dataset(args.labels)[2]
    if args.bootstrap < 1:
        raise UserError("--bootstrap must be at least 1")
    out = args.out or args.predictions.parent
    log = setup_run_log(out, "evaluate", args.verbose)
    result = evaluate(args.predictions, table, out, n_boot=args.bootstrap, seed=args.seed,
                      thresholds_from=args.thresholds_from)
    write_run_json(out, "evaluate", {k: str(v) for k, v in vars(args).items()},
                   {"macro_auroc": result["macro_auroc"], "macro_ci": result["bootstrap"]["macro_ci"]})
    log.info(f"macro AUROC {result['macro_auroc']} (95% CI {result['bootstrap']['macro_ci']}); "
             f"{out / 'evaluation.json'}, evaluation.md, roc_curves.png")
    return 0


def _convert(args) -> int:
    from preprocessing.convert.ctrate import convert_ctrate

    if not 1 <= args.dataset_id <= 999:
        raise UserError(f"--dataset-id must be in 1..999 (got {args.dataset_id})")
    convert_ctrate(args.source, nnunet_folder("nnUNet_raw"), dataset_id=args.dataset_id, overwrite=args.overwrite)
    return 0


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": _train, "predict": _predict, "evaluate": _evaluate, "convert": _convert}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
