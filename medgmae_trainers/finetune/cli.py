"""`medgmae_train`: fine-tune UNETR with nnU-Net v2 from a pretrained encoder (or from scratch).

    medgmae_train DATASET CONFIGURATION [--fraction 0.01|0.1|1.0] [--fold 0..4|all]
                  (--pretrained CKPT | --init scratch [--preset tiny|base|paper] | --init nnunet)
                  [--trainer NAME] [--epochs N] [--iters-per-epoch N] [--seed N] [--device cpu|cuda]
                  [--num-gpus N] [--continue] [--npz]

Everything is checked before nnU-Net starts (dataset, plans, checkpoint, fraction, an existing run);
the settings go to `medgmae_finetune.json` in the fold folder (see `run_record` for why a file), then
nnU-Net's own `run_training` trains, checkpoints and validates (and runs DDP for `--num-gpus`).
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
import json
import os
import time
from pathlib import Path
from typing import Sequence

from medgmae_plans.configurations import CONFIGURATIONS, SUPPORTED_PATCHES
from medgmae_plans.constants import FROM_SCRATCH
from medgmae_plans.runtime import UserError, add_common_flags, check_range, check_writable, cli_entry, setup_run_log
from preprocessing.collections import check_cases, folder_cases

from ..networks.presets import PRESETS, UNETR_FEATURE_SIZE
from ..run import resolve_device
from . import EXT_TRAINER_DIR, use_ext_trainers
from .encoder_loading import check_fits, read_pretrained
from .fractions import fold_training_cases, num_selected, parse_fraction
from .plainconv import NNUNET_LR
from .run_record import (RECORD, VALIDATION_BY_DEVICE, Settings, differences, fold_folder, new_settings,
                         read_record, write_record)

PLANS = Settings.plans
DEFAULTS = Settings()  # the run defaults live there; the flags below default to None ("not given")


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    on_gpu, on_cpu = VALIDATION_BY_DEVICE["cuda"], VALIDATION_BY_DEVICE["cpu"]
    p = argparse.ArgumentParser(
        prog="medgmae_train",
        description="Fine-tune UNETR (our ViT encoder + MONAI's UNETR blocks) with nnU-Net v2 on a fraction of "
                    "a fold's training cases, from a medgmae_pretrain checkpoint or from scratch. The results "
                    "folder is a normal nnU-Net results folder: medgmae_predict predicts with it as it is, "
                    f"nnUNetv2_predict with nnUNet_extTrainer={EXT_TRAINER_DIR}.")
    p.add_argument("dataset", help="dataset id, name or alias (AMOS, FLARE22, BTCV, SegTHOR, AbdomenAtlas, Phantom)")
    p.add_argument("configuration", help="plans configuration: "
                   + ", ".join(f"{g.name} ({g.spacing_mm:g} mm, {g.patch}^3)" for g in CONFIGURATIONS.values()))
    p.add_argument("--fraction", help=f"fraction of the fold's training cases, in (0, 1] (default {d.fraction:g})")
    p.add_argument("--fold", help=f"cross-validation fold 0..4 (nnU-Net's 5 folds, or those of the dataset's "
                                  f"splits_final.json), or 'all' (default {d.fold}; 'all' for fewer than 5 cases)")
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--pretrained", metavar="CKPT", help="medgmae_pretrain checkpoint_final.pt (any decoder type)")
    init.add_argument("--init", choices=FROM_SCRATCH,
                      help="no checkpoint: scratch is UNETR randomly initialised; nnunet is nnU-Net's own "
                           "PlainConvUNet and SGD recipe (lr default "
                           f"{NNUNET_LR:g}) at the same patch and budget, the baseline a user would pick instead")
    p.add_argument("--preset", choices=list(PRESETS),
                   help=f"encoder sizes; scratch: default {d.preset} (what the plans say); with --pretrained it "
                        f"must match the checkpoint's")
    p.add_argument("--patch", type=int, choices=SUPPORTED_PATCHES,
                   help="ViT patch size (default: the checkpoint's, or the preset's)")
    p.add_argument("--patch-size", type=int, metavar="N",
                   help="cubic fine-tuning patch in voxels, >= 16 and a multiple of the ViT patch (default: the "
                        "plans', 96 for 3d_fullres, 48 for 3d_lowres); position embeddings are re-gridded to its "
                        "token grid")
    p.add_argument("--trainer", help="trainer name MedGMAETrainer_<init>_f<pct>[_<tag>] (default: derived from the "
                                     "init and fraction; add a tag to keep variants apart)")
    p.add_argument("--epochs", type=int, help=f"epochs, >= 1 (default {d.epochs}, nnU-Net's)")
    p.add_argument("--iters-per-epoch", type=int, dest="iterations_per_epoch", metavar="N",
                   help=f"training iterations per epoch, >= 1 (default {d.iterations_per_epoch})")
    p.add_argument("--seed", type=int, help=f"seed of the new layers' weights, batch sampling and augmentation, "
                                           f">= 0; replicates differ by it (default {d.seed})")
    p.add_argument("--lr", type=float, help=f"peak AdamW learning rate of the decoder, > 0 (default {d.lr:g})")
    p.add_argument("--layer-decay", type=float,
                   help=f"layer-wise lr decay of the encoder, in (0, 1], applied alike to every init so that inits "
                        f"differ only in their start weights (default {d.layer_decay:g}: none, the paper's AdamW)")
    p.add_argument("--fraction-seed", type=int, metavar="N",
                   help=f"seed of the shuffle that picks the fraction's labelled cases, >= 0; replicates that "
                        f"should also differ in which cases were labelled change it (default {d.fraction_seed}, "
                        f"nnU-Net's split seed)")
    tiny = ", ".join(f"{k} preset {v}" for k, v in UNETR_FEATURE_SIZE.items())
    p.add_argument("--feature-size", type=int, help=f"UNETR decoder width, >= 1 (default: the plans' 16; {tiny})")
    p.add_argument("--no-mirroring", action="store_true",
                   help="no mirroring augmentation, nor test-time mirroring (nnU-Net's NoMirroring variant): "
                        "left and right organs stay apart; default: nnU-Net's mirroring on all axes")
    p.add_argument("--val-step-size", type=float,
                   help=f"sliding-window step of the final validation and of medgmae_predict on the run, in (0, 1] "
                        f"(default: nnU-Net's "
                        f"{on_gpu['val_step_size']:g} on cuda, {on_cpu['val_step_size']:g} on cpu)")
    p.add_argument("--val-mirroring", choices=("on", "off"),
                   help=f"test-time mirroring in the final validation (default: "
                        f"{'on' if on_gpu['val_mirroring'] else 'off'} with cuda, "
                        f"{'on' if on_cpu['val_mirroring'] else 'off'} on cpu)")
    p.add_argument("--export-resampling", choices=("torch", "plans"),
                   help=f"how predicted probabilities go back to the original geometry (validation and "
                        f"prediction): torch, nnU-Net's resample_torch_fornnunet (~7x faster on CPU), or plans, "
                        f"the plans' scikit-image resampling (default {d.export_resampling})")
    p.add_argument("--fp32", action="store_true",
                   help="train in float32 on a CPU (default: bf16 autocast for the training step where the CPU "
                        "computes bf16 natively, AMX or AVX512-BF16: about twice as fast)")
    p.add_argument("--threads", type=int,
                   help="CPU budget of this run, >= 1: torch threads and nnU-Net's augmentation processes "
                        "(default: all cores for both, nnU-Net's); two runs side by side on two cores: 1 each")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs for nnU-Net's own DDP, >= 1 (cuda only)")
    p.add_argument("--continue", dest="resume", action="store_true", help="continue the run in the results folder")
    p.add_argument("--npz", action="store_true", help="also save the validation softmax (nnU-Net's --npz)")
    return add_common_flags(p)


def parse_fold(text: str | None):
    """--fold as medgmae_train reads it (also medgmae_probe's): a fold number, 'all', or the default."""
    if text is None:
        return DEFAULTS.fold
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise UserError(f"--fold {text!r}: give a fold number (0..4) or 'all'")


def read_plans(folders, dataset: str, configuration: str) -> dict:
    """The dataset's MedGMAE plans, refused in one line unless `configuration` is planned and preprocessed."""
    plans_file = folders["nnUNet_preprocessed"] / dataset / f"{PLANS}.json"
    if not plans_file.is_file():
        raise UserError(f"{plans_file}: no MedGMAE plans; run medgmae_plan_and_preprocess -d {dataset} first")
    try:
        plans = json.loads(plans_file.read_text())
    except ValueError as err:
        raise UserError(f"{plans_file}: not readable JSON ({err})") from None
    if configuration not in plans.get("configurations", {}):
        raise UserError(f"{plans_file}: no configuration {configuration!r}; it has "
                        f"{sorted(plans.get('configurations', {}))} (plan it with medgmae_plan_and_preprocess "
                        f"-d {dataset} -c {configuration})")
    data = folders["nnUNet_preprocessed"] / dataset / plans["configurations"][configuration]["data_identifier"]
    if not data.is_dir():
        raise UserError(f"{data}: preprocessed data missing; run medgmae_plan_and_preprocess -d {dataset} "
                        f"-c {configuration}")
    return plans


def make_settings(args, plans: dict) -> Settings:
    """The run's settings from the flags given (checked); `new_settings` fills in the defaults."""
    from .trainers import parse_trainer_name, trainer_name

    fraction = DEFAULTS.fraction if args.fraction is None else parse_fraction(args.fraction)
    fold = parse_fold(args.fold)
    pre = None
    if args.pretrained:
        pre = read_pretrained(args.pretrained)
        check_fits(pre, plans, args.configuration, preset=args.preset, patch=args.patch)
    init = pre.init if pre else args.init
    if init == "nnunet":
        unetr_only = [flag for flag, value in (("--preset", args.preset), ("--patch", args.patch),
                                               ("--feature-size", args.feature_size),
                                               ("--layer-decay", args.layer_decay)) if value is not None]
        if unetr_only:
            raise UserError(f"{', '.join(unetr_only)}: UNETR settings; --init nnunet trains nnU-Net's PlainConvUNet")
    name = args.trainer or trainer_name(init, fraction)
    try:
        name_init, name_fraction, _ = parse_trainer_name(name)
    except ValueError as err:
        raise UserError(f"--trainer: {err}") from None
    if name_init != init or abs(name_fraction - fraction) > 1e-9:
        raise UserError(f"--trainer {name} says init {name_init}, fraction {name_fraction}, but this run is init "
                        f"{init}, fraction {fraction}")
    settings = new_settings(
        plans, args.configuration, fold, name, fraction, args.device, pretrained=pre, preset=args.preset,
        patch=args.patch, patch_size=args.patch_size, feature_size=args.feature_size, init=init,
        seed=args.seed, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, lr=args.lr,
        layer_decay=args.layer_decay, fraction_seed=args.fraction_seed, val_step_size=args.val_step_size,
        val_mirroring=None if args.val_mirroring is None else args.val_mirroring == "on",
        export_resampling=args.export_resampling, progress_bar=False if args.no_pbar else None,
        mirroring=False if args.no_mirroring else None, cpu_bf16=False if args.fp32 else None)
    return settings


def check_numbers(args) -> None:
    """Every numeric flag in the range its --help states."""
    for flag, value in (("--epochs", args.epochs), ("--iters-per-epoch", args.iterations_per_epoch),
                        ("--feature-size", args.feature_size), ("--num-gpus", args.num_gpus),
                        ("--threads", args.threads)):
        check_range(flag, value, 1)
    check_range("--seed", args.seed, 0)
    check_range("--fraction-seed", args.fraction_seed, 0)
    check_range("--lr", args.lr, 0, low_open=True)
    check_range("--layer-decay", args.layer_decay, 0, 1, low_open=True)
    check_range("--val-step-size", args.val_step_size, 0, 1, low_open=True)
    if args.patch_size is not None and args.patch_size < 16:
        raise UserError(f"--patch-size {args.patch_size} is too small; give e.g. 48, 64 or 96")


# a lower bound of what one voxel of a training patch costs: the network's full-resolution feature maps
# (UNETR's decoder keeps about six of `feature_size` channels there), float32, forward and backward
_BYTES_PER_VOXEL_AND_CHANNEL = 6 * 4 * 2


def check_patch_memory(patch_size: int | None, settings: Settings, config: dict, device: str) -> None:
    """Refuse a `--patch-size` whose batch cannot fit the device's memory even by a lower bound (a 1000³
    patch was killed for memory after 82 s); the plans' own patch is nnU-Net's and fits by design."""
    if patch_size is None:
        return
    import math

    import torch

    batch = int(config.get("batch_size", 2))
    channels = int((settings.arch_kwargs or {}).get("feature_size") or 16)
    need = batch * patch_size ** 3 * channels * _BYTES_PER_VOXEL_AND_CHANNEL
    if device == "cuda" and torch.cuda.is_available():
        have, where = torch.cuda.get_device_properties(0).total_memory, "the GPU"
    else:
        try:
            have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        limit = int(math.floor((have / (batch * channels * _BYTES_PER_VOXEL_AND_CHANNEL)) ** (1 / 3)))
        raise UserError(f"--patch-size {patch_size}: a batch of {batch} patches of {patch_size}^3 needs at least "
                        f"{need / 2 ** 30:.0f} GiB for the network's full-resolution activations alone; {where} has "
                        f"{have / 2 ** 30:.0f} GiB (the limit is below {limit}^3)")


def check_existing(settings: Settings, folder: Path, resume: bool) -> None:
    """Refuse to overwrite a run; for --continue, refuse other settings than the run's own.

    --continue without a run starts one, as nnU-Net's `--c` does.
    """
    old = read_record(folder)
    if resume:
        if old is None:
            return
        diff = differences(old, settings)
        if diff:
            raise UserError(f"{folder / RECORD}: --continue with other settings than the run's ({'; '.join(diff)})")
    elif (old is not None and not _failed_start(old, folder)) or any(folder.glob("checkpoint_*.pth")):
        raise UserError(f"{folder}: holds a run already; pass --continue to resume it, or --trainer "
                        f"{settings.trainer}_<tag> for a separate run")
    plans_json = folder.parent / "plans.json"
    if plans_json.is_file():
        try:
            arch = json.loads(plans_json.read_text())["configurations"][settings.configuration]["architecture"]
        except (ValueError, KeyError):
            return
        if arch.get("arch_kwargs") != json.loads(json.dumps(settings.arch_kwargs)):  # tuples read back as lists
            raise UserError(f"{plans_json}: this trainer's results folder holds another UNETR architecture "
                            f"({arch.get('arch_kwargs')}); use --trainer {settings.trainer}_<tag>")


def _failed_start(old: Settings, folder: Path) -> bool:
    """A run that failed before its first checkpoint: nothing to resume, so a new start replaces it."""
    return old.status == "failed" and not any(folder.glob("checkpoint_*.pth"))


def _environment(device: str, threads: int | None) -> None:
    """nnU-Net reads these: our trainer folder, and worker counts that fit the machine (or --threads)."""
    use_ext_trainers()
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(8, os.cpu_count() or 1))))
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["nnUNet_n_proc_DA"] = str(threads)
    if device == "cpu":
        os.environ.setdefault("nnUNet_compile", "f")  # nnU-Net never compiles on CPU; this keeps it quiet


def _summary(folder: Path) -> dict:
    path = folder / "validation" / "summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    return {"validation_summary": str(path), "foreground_mean_dice": summary["foreground_mean"]["Dice"],
            "mean_dice_per_label": {k: v["Dice"] for k, v in summary["mean"].items()}}


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_numbers(args)  # before --threads is applied, and before the plans are read
    import torch

    from medgmae_plans.datasets import resolve_dataset
    from medgmae_plans.runtime.paths import ensure_nnunet_env

    folders = ensure_nnunet_env()
    dataset = resolve_dataset(args.dataset)
    plans = read_plans(folders, dataset, args.configuration)
    args.device = resolve_device(args.device).type  # cpu or cuda (the flag's choices)
    if args.num_gpus > 1 and args.device != "cuda":
        raise UserError("--num-gpus > 1 needs --device cuda (nnU-Net's DDP is NCCL only)")
    _environment(args.device, args.threads)
    settings = make_settings(args, plans)
    check_patch_memory(args.patch_size, settings, plans["configurations"][args.configuration], args.device)
    fold_cases = fold_training_cases(folders["nnUNet_preprocessed"] / dataset, settings.fold)
    data = folders["nnUNet_preprocessed"] / dataset / plans["configurations"][args.configuration]["data_identifier"]
    check_cases(folder_cases(data, labelled=True))  # nnU-Net's data workers would fail on a bad one mid-run
    folder = fold_folder(folders["nnUNet_results"], dataset, settings.trainer, PLANS, args.configuration,
                         settings.fold)
    check_writable(folders["nnUNet_results"], "nnUNet_results folder")
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(folder, "medgmae_train run")  # one writer: a second start or --continue while this one trains
    check_existing(settings, folder, args.resume)
    old = read_record(folder) if args.resume else None
    if old is not None and old.status == "finished":
        # A rerun (e.g. the main job a second time) keeps the finished run and its validation.
        print(f"medgmae_train: {folder} is already finished; nothing to do")
        return 0
    if old is not None:
        settings.train_cases, settings.val_cases, settings.results = old.train_cases, old.val_cases, old.results
    settings.status = "running"
    write_record(folder, settings)
    log = setup_run_log(folder, "medgmae_train", args.verbose)
    log.info(f"{settings.trainer}: {settings.init_display} init"
             + (f" from {settings.pretrained_checkpoint}" if settings.pretrained_checkpoint else
                f" (preset {settings.preset})")
             + (f", {num_selected(fold_cases, settings.fraction)} of fold {settings.fold}'s {fold_cases} training cases"
                if fold_cases else f", {settings.fraction:g} of fold {settings.fold}'s training cases")
             + f", {settings.epochs} epochs x "
               f"{settings.iterations_per_epoch} iterations, on {args.device}")
    log.info(f"results: {folder}")

    from nnunetv2.run.run_training import run_training

    start = time.time()
    try:
        run_training(dataset, args.configuration, settings.fold, settings.trainer, PLANS, num_gpus=args.num_gpus,
                     export_validation_probabilities=args.npz, continue_training=old is not None,
                     device=torch.device(args.device))
    except BaseException:
        done = read_record(folder) or settings
        done.status = "failed"
        write_record(folder, done)
        raise
    done = read_record(folder) or settings
    done.status = "finished"
    done.results = {**done.results, "wall_s": round(time.time() - start, 1),
                    "checkpoint_final": str(folder / "checkpoint_final.pth"), **_summary(folder)}
    write_record(folder, done)
    dice = done.results.get("foreground_mean_dice")
    log.info(f"done in {done.results['wall_s']} s; validation foreground mean Dice "
             f"{dice if dice is None else round(dice, 4)}; settings and results in {folder / RECORD}")
    return 0


main = cli_entry(_main)

if __name__ == "__main__":
    raise SystemExit(main())
