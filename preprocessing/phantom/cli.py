"""medgmae_make_phantom: write the synthetic abdominal CT phantom as an nnU-Net raw dataset."""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
from pathlib import Path

from medgmae_plans.runtime.paths import nnunet_folder
from medgmae_plans.runtime import UserError, add_common_flags, check_range, cli_entry

from .dataset import DEFAULT_DATASET_ID, FINDINGS_DATASET_ID
from .findings import DEFAULT_PREVALENCE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medgmae_make_phantom",
        description="Write the synthetic abdominal CT phantom to $nnUNet_raw/Dataset990_AbdomenPhantom "
                    "(nnU-Net v2 raw format, AMOS22 task-1 labels). Reuses an identical existing dataset.")
    p.add_argument("-n", type=int, default=20, help="labelled training cases, >= 1 (default 20)")
    p.add_argument("--test", type=int, default=0, help="labelled test cases, >= 0 (imagesTs/labelsTs)")
    p.add_argument("--unlabeled", type=int, default=0, help="unlabelled images for pretraining, >= 0 (imagesUnlabeled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset-id", type=int, default=None,
                   help=f"1..999 (default {DEFAULT_DATASET_ID}, or {FINDINGS_DATASET_ID} with --findings)")
    p.add_argument("--findings", action="store_true",
                   help="add per-case findings (effusion, liver lesions, ...) and classification_labels.csv; "
                        f"writes Dataset{FINDINGS_DATASET_ID}_PhantomFindings (test cases = validation split)")
    p.add_argument("--prevalence", type=float, default=DEFAULT_PREVALENCE,
                   help=f"share of cases with each finding, in [0, 1], drawn independently (default {DEFAULT_PREVALENCE})")
    p.add_argument("--preview", type=Path, help="write a PNG of six training cases side by side (phases, habitus, coverage) here")
    p.add_argument("--spacing-scale", type=float, default=1.0,
                   help="multiply every spacing, > 0 (e.g. 3 for small volumes in quick tests)")
    p.add_argument("-np", "--workers", type=int, default=None, help="processes, >= 1 (default: all cores)")
    return add_common_flags(p)


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_range("-np", args.workers, 1)
    if args.preview is not None and (args.preview.is_dir() or args.preview.suffix.lower() != ".png"):
        raise UserError(f"--preview {args.preview}: give a .png file to write the montage to")
    from .dataset import generate_dataset
    from .preview import write_preview

    raw = nnunet_folder("nnUNet_raw")
    dataset_id = args.dataset_id
    if dataset_id is None:
        dataset_id = FINDINGS_DATASET_ID if args.findings else DEFAULT_DATASET_ID
    folder = generate_dataset(raw, n_train=args.n, n_test=args.test, n_unlabeled=args.unlabeled,
                              seed=args.seed, dataset_id=dataset_id, spacing_scale=args.spacing_scale,
                              workers=args.workers, pbar=not args.no_pbar,
                              findings=args.prevalence if args.findings else None)
    if args.preview:
        try:
            write_preview(folder, args.preview)
        except OSError as err:
            raise UserError(f"cannot write preview {args.preview}: {err.strerror or err}") from None
        print(f"preview: {args.preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
