"""`medgmae_plan_and_preprocess`: fingerprint, MedGMAE plans and preprocessing, the nnU-Net way.

    medgmae_plan_and_preprocess -d AMOS [-d FLARE22 ...] [-c 3d_fullres [3d_lowres]] [-np N] [--verify] [--clean]
    medgmae_plan_and_preprocess --images DIR --name NAME [-c ...] [-np N]

Labelled datasets (`-d`, an id, a full name or an alias) are checked (`validate`), fingerprinted
with nnU-Net's own extractor (reused on later runs unless the raw files changed or `--clean`),
planned by `MedGMAEPlanner` and preprocessed with nnU-Net's `DefaultPreprocessor`, giving
`nnUNet_preprocessed/<Dataset>/MedGMAEPlans.json` and `.../MedGMAEPlans_<configuration>/` for each
configuration of `-c` (`3d_fullres` by default; `3d_lowres` is the 3 mm one, see
`medgmae_plans.configurations`). A configuration planned earlier stays in the plans and its data
stays as it is.

Unlabelled collections (`--images DIR --name NAME`: NIfTI files and/or DICOM series) get the same
spacing, window and file format in `nnUNet_preprocessed/Collection_<NAME>/` (see
`preprocessing.collections` for the layout and the reader the pretraining uses).

Each run writes `medgmae_plan_and_preprocess.log` and `.json` beside its outputs.
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Sequence

from medgmae_plans.runtime.atomic import remove_leftovers, write_json_atomic
from medgmae_plans.configurations import CONFIGURATIONS, DEFAULT_CONFIGURATION, PLANS_NAME, geometry
from medgmae_plans.datasets import dataset_id, resolve_dataset
from medgmae_plans.runtime.locks import lock_folder
from medgmae_plans.runtime.paths import ensure_nnunet_env, nnunet_folder
from medgmae_plans.runtime import (UserError, add_common_flags, check_writable, cli_entry, progress, setup_run_log,
                      write_run_json)

RUN_NAME = "medgmae_plan_and_preprocess"
COLLECTION_PREFIX = "Collection_"
FINGERPRINT_SOURCE = "medgmae_fingerprint_source.json"


def default_num_processes() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgmae_plan_and_preprocess",
        description="nnU-Net fingerprint + MedGMAE plans (3d_fullres: 1.5 mm, 96^3; 3d_lowres: 3 mm, 48^3; "
                    "HU [-175, 250] -> [0, 1]) + preprocessing")
    parser.add_argument("-d", dest="datasets", action="append", default=[], metavar="DATASET",
                        help="dataset id, full DatasetXXX_Name or alias (AMOS, FLARE22, BTCV, SegTHOR, "
                             "AbdomenAtlas, Phantom); repeatable")
    parser.add_argument("-c", dest="configurations", nargs="+", default=[DEFAULT_CONFIGURATION],
                        choices=list(CONFIGURATIONS),
                        help="configurations to plan and preprocess (default: %(default)s; 3d_lowres is 3 mm)")
    parser.add_argument("-np", dest="num_processes", type=int, default=default_num_processes(),
                        help="worker processes, >= 1 (default: %(default)s)")
    parser.add_argument("--verify", action="store_true",
                        help="also run nnU-Net's own dataset integrity check")
    parser.add_argument("--clean", action="store_true",
                        help="recompute the fingerprint and the preprocessed data even if the raw files did not change")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="an unlabelled collection: a folder of NIfTI files and/or DICOM series")
    parser.add_argument("--name", help="the collection's name (with --images)")
    return add_common_flags(parser)


def _bar(enabled: bool, desc: str):
    return lambda items: progress(items, enabled=enabled, desc=desc, total=len(items))


def _raw_files(raw_folder: Path, cases: dict) -> list[Path]:
    return [raw_folder / "dataset.json"] + [Path(p) for c in cases.values() for p in (*c["images"], c["label"])]


def _fingerprint(name: str, raw_folder: Path, out_folder: Path, cases: dict, args) -> str:
    """nnU-Net's fingerprint, recomputed when missing, stale or with --clean; returns what happened."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset

    from .preprocess import data_signature

    signature = data_signature(_raw_files(raw_folder, cases), {}, {})
    source_file = out_folder / FINGERPRINT_SOURCE
    fingerprint_file = out_folder / "dataset_fingerprint.json"
    if not args.clean and fingerprint_file.is_file() and source_file.is_file():
        try:
            if json.loads(source_file.read_text()).get("signature") == signature:
                return "reused"
        except ValueError:
            pass
    source_file.unlink(missing_ok=True)
    try:
        extract_fingerprint_dataset(dataset_id(name), num_processes=args.num_processes, clean=True,
                                    verbose=args.verbose, show_progress_bar=not args.no_pbar)
    except Exception as err:
        if args.verbose:
            raise
        raise UserError(f"{raw_folder}: nnU-Net fingerprint extraction failed ({type(err).__name__}: {err})") from err
    # written last: a fingerprint without a matching signature is never reused
    write_json_atomic(source_file, {"signature": signature})
    return "extracted"


def _verify_with_nnunet(raw_folder: Path, args) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(str(raw_folder), args.num_processes)
    except Exception as err:
        raise UserError(f"{raw_folder}: nnU-Net's integrity check failed ({type(err).__name__}: {err})") from None


def plan_and_preprocess_dataset(name: str, args) -> dict:
    from .validate import check_dataset

    raw_folder = nnunet_folder("nnUNet_raw") / name
    out_folder = check_writable(nnunet_folder("nnUNet_preprocessed") / name)
    remove_leftovers(out_folder)  # of a run killed mid-write; the lock says none is running
    timings: dict[str, float] = {}
    start = time.perf_counter()
    meta, cases = check_dataset(raw_folder, args.num_processes, _bar(not args.no_pbar, f"Checking {name}"))
    timings["check_s"] = time.perf_counter() - start
    log = setup_run_log(out_folder, RUN_NAME, args.verbose)
    log.info(f"{name}: {len(cases)} cases passed the input checks ({timings['check_s']:.1f} s)")
    if args.verify:
        _verify_with_nnunet(raw_folder, args)

    from medgmae_plans.planner import MedGMAEPlanner
    from .preprocess import CaseJob, copy_ground_truth

    step = time.perf_counter()
    fingerprint = _fingerprint(name, raw_folder, out_folder, cases, args)
    timings["fingerprint_s"] = time.perf_counter() - step
    log.info(f"fingerprint {fingerprint} ({timings['fingerprint_s']:.1f} s)")

    step = time.perf_counter()
    plans = MedGMAEPlanner(dataset_id(name), configurations=args.configurations).plan_experiment()
    timings["plan_s"] = time.perf_counter() - step

    jobs = [CaseJob(case_id, tuple(files["images"]), files["label"]) for case_id, files in cases.items()]
    summary = {"dataset": name, "cases": len(cases), "fingerprint": fingerprint, "timings": timings,
               "plans_file": str(out_folder / f"{PLANS_NAME}.json"), "configurations": {}}
    for configuration in args.configurations:
        step = time.perf_counter()
        summary["configurations"][configuration] = _preprocess_configuration(
            out_folder, configuration, jobs, plans, meta, _raw_files(raw_folder, cases), args, log)
        timings[f"preprocess_{configuration}_s"] = time.perf_counter() - step
    copy_ground_truth(cases, out_folder / "gt_segmentations", meta["file_ending"])
    timings["total_s"] = time.perf_counter() - start
    log.info(f"{name}: done in {timings['total_s']:.1f} s")
    write_run_json(out_folder, RUN_NAME, _settings(args), summary)
    return summary


def _preprocess_configuration(out_folder: Path, configuration: str, jobs: list, plans: dict, dataset_json: dict,
                              files: list[Path], args, log) -> dict:
    """Preprocess one configuration into its data folder, unless its signature says it is up to date."""
    from .preprocess import configuration_plans, data_signature, is_up_to_date, preprocess_into

    config = plans["configurations"][configuration]
    data_folder = out_folder / geometry(configuration).data_identifier
    signature = data_signature(files, configuration_plans(plans, configuration), dataset_json)
    start = time.perf_counter()
    result = {"data_folder": str(data_folder), "spacing": config["spacing"], "patch_size": config["patch_size"]}
    if not args.clean and is_up_to_date(data_folder, signature):
        log.info(f"{configuration}: reused the preprocessed {len(jobs)} cases in {data_folder}")
        return {**result, "preprocessing": "reused"}
    results = preprocess_into(data_folder, jobs, plans, dataset_json, configuration, args.num_processes,
                              _bar(not args.no_pbar, f"Preprocessing {configuration}"), signature=signature)
    log.info(f"{configuration}: spacing {config['spacing']}, patch {config['patch_size']}, median shape "
             f"{config['median_image_size_in_voxels']}; preprocessed {len(jobs)} cases into {data_folder} "
             f"({time.perf_counter() - start:.1f} s)")
    return {**result, "preprocessing": "done", "case_shapes": {r["case"]: r["shape"] for r in results}}


def preprocess_collection(images: Path, name: str, args) -> dict:
    from .image_sources import CANONICAL_ORIENTATION, find_images, source_geometry
    from .validate import run_jobs

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"collection name {name!r}: use letters, digits, '_', '-' and '.'")
    images = images.expanduser().resolve()
    sources = find_images(images)
    start = time.perf_counter()
    headers = run_jobs([(s,) for s in sources], source_geometry, args.num_processes,
                       _bar(not args.no_pbar, f"Checking {name}"))

    from medgmae_plans.planner import build_plans, save_plans_file
    from .preprocess import CaseJob

    collection = COLLECTION_PREFIX + name
    out_folder = check_writable(nnunet_folder("nnUNet_preprocessed") / collection)
    remove_leftovers(out_folder)
    plans = build_plans(collection, [h[0] for h in headers], [h[1] for h in headers],
                        planner_name="MedGMAEPlanner (unlabelled collection)", configurations=args.configurations)
    dataset_json = {"name": name, "description": f"unlabelled CT collection from {images}",
                    "channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": len(sources),
                    "file_ending": ".nii.gz", "labelled": False,
                    # read as the reorienting reader reads labelled cases; part of the data signature, so
                    # collections preprocessed as stored (before this key) are preprocessed again
                    "orientation": CANONICAL_ORIENTATION}
    files = [f for s in sources for f in (s.dicom_files or (s.path,))]
    jobs = [CaseJob(s.case_id, source=s) for s in sources]
    log = setup_run_log(out_folder, RUN_NAME, args.verbose)
    summary = {"collection": collection, "source": str(images), "cases": len(sources), "configurations": {}}
    for configuration in args.configurations:
        summary["configurations"][configuration] = _preprocess_configuration(
            out_folder, configuration, jobs, plans, dataset_json, files, args, log)
    # plans and dataset.json after the data: the reader lists cases from the data folder
    save_plans_file(plans, out_folder / f"{PLANS_NAME}.json")
    write_json_atomic(out_folder / "dataset.json", dataset_json)
    write_json_atomic(out_folder / "sources.json", {s.case_id: s.describe() for s in sources})
    summary["total_s"] = time.perf_counter() - start
    log.info(f"collection {name}: {len(sources)} images from {images} ({summary['total_s']:.1f} s)")
    write_run_json(out_folder, RUN_NAME, _settings(args), summary)
    return summary


def _settings(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.datasets and args.images is None:
        parser.error("give -d DATASET (repeatable) and/or --images DIR --name NAME")
    if (args.images is None) != (args.name is None):
        parser.error("--images and --name go together")
    if args.num_processes < 1:
        parser.error("-np must be at least 1")
    ensure_nnunet_env()
    raw_root = nnunet_folder("nnUNet_raw")
    names = [resolve_dataset(text, roots=[raw_root]) for text in args.datasets]
    for name in dict.fromkeys(names):
        with _lock(raw_root / name, name):
            plan_and_preprocess_dataset(name, args)
    if args.images is not None:
        with _lock(args.images, COLLECTION_PREFIX + args.name):
            preprocess_collection(args.images, args.name, args)
    return 0


def _lock(source: Path, name: str):
    """One run per dataset at a time: a second would redo the same work into the same folders. The
    lock is taken on the raw folder it reads (nothing is written to take it)."""
    if not Path(source).is_dir():
        return contextlib.nullcontext()  # the run itself says what is missing
    return lock_folder(source, f"medgmae_plan_and_preprocess run for {name}")


if __name__ == "__main__":
    raise SystemExit(main())
