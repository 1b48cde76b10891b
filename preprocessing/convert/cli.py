"""`medgmae_convert {amos,flare22,btcv,segthor,abdomenatlas} SOURCE_DIR [--dataset-id N]`.

Writes `nnUNet_raw/DatasetXXX_Name` (see each converter module for its layout and label map),
with `conversion.json` and `conversion.log` inside saying what was found.
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
from pathlib import Path
from typing import Sequence

from medgmae_plans.runtime.paths import nnunet_folder
from medgmae_plans.runtime import UserError, add_common_flags, check_range, check_writable, cli_entry, progress

from . import abdomenatlas, amos, btcv, flare22, segthor
from .common import write_raw_dataset

CONVERTERS = {"amos": amos, "flare22": flare22, "btcv": btcv, "segthor": segthor, "abdomenatlas": abdomenatlas}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medgmae_convert",
                                     description="convert a published dataset layout into an nnU-Net raw dataset")
    parser.add_argument("dataset", choices=sorted(CONVERTERS), help="which dataset SOURCE_DIR holds")
    parser.add_argument("source", type=Path, metavar="SOURCE_DIR", help="the unpacked download")
    parser.add_argument("--dataset-id", type=int, help="nnU-Net dataset id, 1..999 (default: per dataset, e.g. AMOS 218)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2, help="worker processes, >= 1 (default: 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing converted dataset")
    return add_common_flags(parser)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_range("-np", args.num_processes, 1)  # 0 once ran as 1, unsaid
    module = CONVERTERS[args.dataset]
    dataset_id = module.DATASET_ID if args.dataset_id is None else args.dataset_id
    if not 1 <= dataset_id <= 999:
        raise UserError(f"--dataset-id must be in 1..999 (got {dataset_id})")
    source = args.source.expanduser().resolve()
    if not source.is_dir():
        raise UserError(f"{source}: not a folder")
    raw_root = check_writable(nnunet_folder("nnUNet_raw"), "nnUNet_raw folder")
    conversion = module.find(source)

    def bar(items):
        return progress(items, enabled=not args.no_pbar, desc=f"Converting {args.dataset}", total=len(items))

    write_raw_dataset(conversion, raw_root, dataset_id, source, args.num_processes, args.overwrite, bar)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
