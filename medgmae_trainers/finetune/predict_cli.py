"""`medgmae_predict`: nnU-Net's prediction from a results folder, with our trainers findable.

    medgmae_predict -i IMAGES -o OUT -d DATASET -tr MedGMAETrainer_medgmae_f10 [-c 3d_fullres] [-p MedGMAEPlans]
                    [-f 0 1 ..] [-chk checkpoint_final.pth] [-step_size 0.5] [--disable_tta] [-device cuda|cpu|mps]
                    [--save_probabilities] [--continue_prediction] [-npp N] [-nps N] [-num_parts N -part_id K]

nnU-Net 2.8 finds a trainer outside its own package only through `nnUNet_extTrainer`, so plain
`nnUNetv2_predict -tr MedGMAETrainer_...` needs `export nnUNet_extTrainer=<our nnunet_ext folder>`
first. This command puts that folder into the variable itself (`use_ext_trainers`), then runs
nnU-Net's own `nnUNetPredictor` the way `nnUNetv2_predict` does, so the two give the same output.

The arguments are `nnUNetv2_predict`'s, with defaults that fit this toolkit: `-p` MedGMAEPlans,
`-c` 3d_fullres, `-tr` required (nnU-Net's default trainer is not ours), `-f` the folds whose
checkpoint exists (nnU-Net's 0..4 fails on a one-fold run), `-device` cuda when available; `-d`
also takes the toolkit's aliases. A missing folder, fold or device is one line and exit status 2.
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
import os
from pathlib import Path
from typing import Sequence

from preprocessing.image_sources import IMAGE_ENDINGS
from medgmae_plans.runtime import UserError, add_common_flags, check_writable, cli_entry
from preprocessing.validate import check_complete, check_ct_image, read_image

from . import use_ext_trainers
from .run_record import Settings


def _env_int(var: str, default: int) -> int:
    """nnUNetv2_predict's -npp/-nps default: the variable when it holds an integer, else `default`."""
    try:
        return int(os.environ.get(var) or default)
    except ValueError:
        return default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medgmae_predict",
        description="Predict segmentations with a trained results folder, as nnUNetv2_predict does (same "
                    "arguments), but with the MedGMAE trainers found without exporting nnUNet_extTrainer.")
    p.add_argument("-i", required=True, metavar="FOLDER",
                   help="input images, named CASE_0000.nii.gz (the training dataset's channels and file ending)")
    p.add_argument("-o", required=True, metavar="FOLDER", help="output folder (created if missing)")
    p.add_argument("-d", required=True, metavar="DATASET", help="dataset id, name or alias (e.g. 990, Phantom)")
    p.add_argument("-p", default=Settings.plans, metavar="PLANS", help=f"plans identifier (default {Settings.plans})")
    p.add_argument("-tr", required=True, metavar="TRAINER", help="trainer name, e.g. MedGMAETrainer_medgmae_f10")
    p.add_argument("-c", default=Settings.configuration, metavar="CONFIGURATION",
                   help=f"configuration (default {Settings.configuration})")
    p.add_argument("-f", nargs="+", metavar="FOLD",
                   help="folds to ensemble, numbers or 'all' (default: every fold that has the checkpoint)")
    p.add_argument("-step_size", type=float, default=0.5,
                   help="sliding-window step as a fraction of the patch, in (0, 1] (default 0.5, nnU-Net's)")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (faster, less accurate)")
    p.add_argument("--save_probabilities", action="store_true",
                   help="also save the class probabilities (.npz, for ensembling)")
    p.add_argument("--continue_prediction", action="store_true", help="keep outputs that exist already")
    p.add_argument("-chk", default="checkpoint_final.pth", metavar="NAME",
                   help="checkpoint file name in each fold folder (default checkpoint_final.pth)")
    p.add_argument("-npp", type=int, default=_env_int("nnUNet_npp", 3), metavar="N",
                   help="preprocessing processes, >= 0 (default $nnUNet_npp or 3; -npp 0 -nps 0: one process)")
    p.add_argument("-nps", type=int, default=_env_int("nnUNet_nps", 3), metavar="N",
                   help="segmentation export processes, >= 0 (default $nnUNet_nps or 3)")
    p.add_argument("-prev_stage_predictions", metavar="FOLDER",
                   help="previous stage's predictions (cascades only)")
    p.add_argument("-num_parts", type=int, default=1, metavar="N",
                   help="split the cases over N >= 1 separate calls (default 1)")
    p.add_argument("-part_id", type=int, default=0, metavar="K", help="which of the -num_parts calls this is, >= 0 and < -num_parts")
    p.add_argument("-device", choices=("cuda", "cpu", "mps"), help="default: cuda when available, else cpu")
    p.add_argument("--not_on_device", action="store_true",
                   help="keep the sliding-window results off the GPU (for cases larger than its memory)")
    p.add_argument("--disable_progress_bar", dest="no_pbar", action="store_true", help="the same as --no-pbar")
    return add_common_flags(p)


def _folds(given: list[str] | None, model: Path, checkpoint: str) -> list:
    """The folds to use, each with its checkpoint file present."""
    if given is None:
        found = sorted(p.name[len("fold_"):] for p in model.glob("fold_*") if (p / checkpoint).is_file())
        if not found:
            raise UserError(f"{model}: no fold_*/{checkpoint}; has the training finished?")
        given = found
    folds = []
    for text in given:
        if text != "all" and not text.isdigit():
            raise UserError(f"-f {text!r}: give fold numbers or 'all'")
        fold = text if text == "all" else int(text)
        if not (model / f"fold_{fold}" / checkpoint).is_file():
            raise UserError(f"{model / f'fold_{fold}' / checkpoint}: no such checkpoint")
        folds.append(fold)
    return folds


def check_inputs(images: Path, model: Path) -> list[Path]:
    """The input images' names: every file must be a case of the model's one CT channel (`CASE_0000` +
    the dataset's file ending). nnU-Net skips other endings without a word and fails with a traceback on
    a name without `_0000` (as this command's own earlier outputs are named). Their contents were
    checked before (`_main`: `read_image` and `check_ct_image`, as every command checks a CT)."""
    import json

    try:
        ending = json.loads((model / "dataset.json").read_text())["file_ending"]
    except (OSError, ValueError, KeyError, TypeError):
        ending = ".nii.gz"
    files = sorted(p for p in images.iterdir() if not p.name.startswith("."))
    for path in files:
        if path.is_dir() or not path.name.endswith(ending):
            raise UserError(f"{path}: not a {ending} image; -i must hold only the cases to predict "
                            f"(CASE_0000{ending}, the model's file ending)")
        if not path.name[:-len(ending)].endswith("_0000") or len(path.name) == len("_0000" + ending):
            raise UserError(f"{path}: input images are named CASE_0000{ending} (the CT channel); "
                            "is this an earlier prediction?")
    if not files:
        raise UserError(f"-i {images}: no images to predict (expected CASE_0000{ending} files)")
    return files


def _predict_device(name: str | None):
    """The -device flag's device, with nnUNetv2_predict's thread settings: all cores for CPU
    inference, one thread feeding a GPU."""
    import torch

    from ..run import resolve_device

    device = resolve_device(name, "-device")
    torch.set_num_threads((os.cpu_count() or 1) if device.type == "cpu" else 1)
    return device


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from medgmae_plans.datasets import resolve_dataset
    from medgmae_plans.runtime.paths import ensure_nnunet_env

    results = ensure_nnunet_env()["nnUNet_results"]
    if not Path(args.i).is_dir():
        raise UserError(f"-i {args.i}: no such folder of input images")
    if not 0 < args.step_size <= 1:
        raise UserError(f"-step_size {args.step_size} is outside (0, 1]")
    if args.num_parts < 1:
        raise UserError(f"-num_parts {args.num_parts} must be at least 1")
    if not 0 <= args.part_id < args.num_parts:
        raise UserError(f"-part_id {args.part_id} must be in 0..{args.num_parts - 1} (-num_parts {args.num_parts})")
    for flag, value in (("-npp", args.npp), ("-nps", args.nps)):
        if value < 0:
            raise UserError(f"{flag} {value} must be >= 0")
    check_writable(args.o)
    # nnU-Net reads the images with SimpleITK, which takes a cut NIfTI's missing voxels as 0 and NaN as 0 HU
    for image in sorted(Path(args.i).iterdir()):
        if image.is_file() and not image.name.startswith(".") and image.name.lower().endswith(IMAGE_ENDINGS):
            check_ct_image(read_image(image), image)
    dataset = resolve_dataset(args.d, roots=[results])
    model = results / dataset / f"{args.tr}__{args.p}__{args.c}"
    if not model.is_dir():
        trained = sorted(p.name for p in (results / dataset).iterdir() if p.is_dir() and "__" in p.name)
        raise UserError(f"{model}: no such results folder; {dataset} has {', '.join(trained) or 'none'}")
    folds = _folds(args.f, model, args.chk)
    check_inputs(Path(args.i), model)
    device = _predict_device(args.device)
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(args.o, "medgmae_predict")  # one writer per output folder
    predict_folder(model, folds, Path(args.i), Path(args.o), step_size=args.step_size,
                   mirroring=not args.disable_tta, device=device, on_device=not args.not_on_device,
                   checkpoint=args.chk, npp=args.npp, nps=args.nps, num_parts=args.num_parts, part_id=args.part_id,
                   save_probabilities=args.save_probabilities, overwrite=not args.continue_prediction,
                   previous_stage=args.prev_stage_predictions, pbar=not args.no_pbar, verbose=args.verbose)
    return 0


def predict_folder(model: Path, folds: list, images: Path, out: Path, *, step_size: float, mirroring: bool, device,
                   on_device: bool = True, checkpoint: str = "checkpoint_final.pth", npp: int = 0, nps: int = 0,
                   num_parts: int = 1, part_id: int = 0, save_probabilities: bool = False, overwrite: bool = True,
                   previous_stage: str | None = None, pbar: bool = True, verbose: bool = False) -> None:
    """nnU-Net's predictor on a results folder, as `nnUNetv2_predict` runs it (also `medgmae_evaluate --test`)."""
    use_ext_trainers()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=on_device, device=device,
                                verbose=verbose, verbose_preprocessing=verbose, allow_tqdm=pbar)
    initialize_safely(predictor, model, folds, checkpoint)
    Path(out).mkdir(parents=True, exist_ok=True)
    common = dict(save_probabilities=save_probabilities, overwrite=overwrite,
                  folder_with_segs_from_prev_stage=previous_stage)
    if npp == 0 and nps == 0:  # nnUNetv2_predict's rule: no worker processes at all
        predictor.predict_from_files_sequential(str(images), str(out), **common)
    else:
        predictor.predict_from_files(str(images), str(out), num_processes_preprocessing=npp,
                                     num_processes_segmentation_export=nps, num_parts=num_parts,
                                     part_id=part_id, **common)
    check_written(Path(out))


def check_written(out: Path) -> None:
    """Every prediction read back whole: on a full disk nnU-Net's export (SimpleITK's NIfTI writer, in
    worker processes) leaves a cut or 0-byte file and returns as if it had written it."""
    from medgmae_plans.runtime.atomic import disk_full_error

    for path in sorted(out.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_ENDINGS):
            try:
                check_complete(path)
            except UserError as err:
                raise disk_full_error(path, RuntimeError(str(err))) or \
                    UserError(f"{path}: written incompletely ({err}); is its device full or failing?") from None


def load_nnunet_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint (`checkpoint_final.pth`), read as tensors and plain data only (the toolkit's one
    safe reader): a results folder shared by another lab runs no code when it is loaded."""
    from medgmae_plans.runtime.safe_load import load_torch

    ckpt = load_torch(path, "nnU-Net checkpoint")
    if not isinstance(ckpt, dict) or not {"network_weights", "trainer_name", "init_args"} <= set(ckpt):
        raise UserError(f"{path}: not an nnU-Net checkpoint (it holds no network_weights, trainer_name, init_args)")
    return ckpt


def initialize_safely(predictor, model: Path, folds: list, checkpoint: str) -> None:
    """nnU-Net's `initialize_from_trained_model_folder`, with the checkpoints read safely first and handed to it
    (`nnunet_hooks.preloaded_checkpoints`: nnU-Net's own `torch.load(weights_only=False)` would run whatever
    a pickle asks)."""
    from .nnunet_hooks import preloaded_checkpoints

    loaded = {os.path.abspath(str(model / f"fold_{fold}" / checkpoint)):
              load_nnunet_checkpoint(model / f"fold_{fold}" / checkpoint) for fold in folds}
    with preloaded_checkpoints(loaded):
        predictor.initialize_from_trained_model_folder(str(model), folds, checkpoint_name=checkpoint)


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
