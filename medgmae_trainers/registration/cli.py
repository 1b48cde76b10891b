"""medgmae_register {train,predict,evaluate,convert}: deformable registration with the pretrained encoder.

The default dataset is `Phantom`: phantom subjects registered to each other and to copies of
themselves warped by known deformations, made in $nnUNet_raw/Registration_Phantom on first use.
"""
from __future__ import annotations

from medgmae_plans.runtime.threads import use_sleeping_waiters

use_sleeping_waiters()  # a console command's first act: before anything loads torch (see threads)

import argparse
from pathlib import Path

from medgmae_plans.runtime.paths import nnunet_folder
from medgmae_plans.runtime import (UserError, add_common_flags, check_range, check_writable, cli_entry, setup_run_log,
                                   write_run_json)

CONVERTED = {"oasis": "OASIS", "ixi": "IXI"}  # `convert WHICH` -> the dataset it makes, Registration_<NAME>


def build_parser() -> argparse.ArgumentParser:
    from ..networks.presets import PRESETS
    from ..run import DEVICE_HELP
    from preprocessing.layouts.registration import EVAL_SPLITS
    from .network import NETWORKS
    from .trainer import TrainSettings as D  # the run defaults live there; the flags restate none of them

    p = argparse.ArgumentParser(prog="medgmae_register", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a registration network on a dataset's training pairs")
    t.add_argument("-d", "--dataset", default="Phantom", help="registration dataset: folder or name in $nnUNet_raw "
                   "(Phantom, OASIS, IXI; default Phantom)")
    t.add_argument("--network", default=D.network, choices=NETWORKS,
                   help="vit: TransMorph-style with the ViT3D encoder; voxelmorph: MONAI's VoxelMorph baseline")
    t.add_argument("--pretrained", type=Path, help="pretraining checkpoint_final.pt for the ViT encoder")
    t.add_argument("--init", choices=["scratch"], help="random initialisation of the ViT encoder")
    t.add_argument("--preset", default=D.preset, choices=list(PRESETS),
                   help=f"encoder for --init scratch (default {D.preset})")
    t.add_argument("--patch", type=int,
                   help="encoder patch for --init scratch, a power of two >= 4 (default: the preset's)")
    t.add_argument("--feature-size", type=int, default=D.feature_size,
                   help=f"decoder width at full resolution, >= 1 (default {D.feature_size}, TransMorph's)")
    t.add_argument("--diffeomorphic", action="store_true", help="integrate a velocity field (MONAI DVF2DDF, 7 steps)")
    t.add_argument("--steps", type=int, default=D.steps, help=f">= 1 (default {D.steps})")
    t.add_argument("--lr", type=float, default=D.lr, help=f"> 0 (default {D.lr:g})")
    t.add_argument("--w-ncc", type=float, default=D.w_ncc, help=f"NCC weight, >= 0 (default {D.w_ncc:g})")
    t.add_argument("--w-diff", type=float, default=D.w_diff,
                   help=f"diffusion regulariser weight, >= 0 (default {D.w_diff:g})")
    t.add_argument("--w-dice", type=float, default=D.w_dice,
                   help=f"Dice weight, >= 0 (used when the dataset has labels; default {D.w_dice:g})")
    t.add_argument("--ncc-kernel", type=int, default=D.ncc_kernel,
                   help=f"local NCC window edge, odd, >= 1 (default {D.ncc_kernel})")
    t.add_argument("--seed", type=int, default=D.seed, help=f"random seed (default {D.seed})")
    t.add_argument("--device", default="auto", help=DEVICE_HELP)
    t.add_argument("--val-every", type=int, default=D.val_every,
                   help=f"validate every N steps, >= 0 (0: only at the end; default {D.val_every})")
    t.add_argument("--save-every", type=int, default=D.save_every, help=f">= 1 (default {D.save_every})")
    t.add_argument("--out", type=Path, help="run folder (default $nnUNet_results/MedGMAE_register/<dataset>/<run>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint_latest.pt")
    add_common_flags(t)

    pr = sub.add_parser("predict", help="register a split's pairs; write warped images, labels, DDFs, PNGs")
    pr.add_argument("--model", type=Path, required=True, help="training run folder or its checkpoint_final.pt")
    pr.add_argument("-d", "--dataset", default="Phantom")
    pr.add_argument("--split", default="test", choices=EVAL_SPLITS)
    pr.add_argument("--out", type=Path, help="folder (default <model>/<split>)")
    pr.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_common_flags(pr)

    e = sub.add_parser("evaluate", help="Dice per structure, mean Dice, %% det(J)<=0, endpoint error")
    e.add_argument("predictions", type=Path, help="folder written by predict")
    e.add_argument("-d", "--dataset", help="dataset folder (default: the one predict used)")
    e.add_argument("--out", type=Path, help="folder (default the predictions folder)")
    add_common_flags(e)

    c = sub.add_parser("convert", help="OASIS (Learn2Reg 2021 task 3) or IXI (TransMorph) -> Registration_<NAME>")
    c.add_argument("which", choices=list(CONVERTED))
    c.add_argument("source", type=Path)
    c.add_argument("--out", type=Path, help="dataset folder (default $nnUNet_raw/Registration_OASIS or _IXI)")
    c.add_argument("--overwrite", action="store_true")
    add_common_flags(c)
    return p


def dataset_folder(text: str, pbar: bool = True) -> Path:
    """Resolve -d; the phantom pairs are built (with the defaults) on first use, an existing one is used as is."""
    from preprocessing.layouts.registration import DESCRIPTION, PREFIX, resolve

    raw = nnunet_folder("nnUNet_raw")
    if (str(text).lower() in ("phantom", "registration_phantom") and not Path(text).exists()
            and not (raw / (PREFIX + "Phantom") / DESCRIPTION).is_file()):
        from .phantom_pairs import build_phantom_pairs

        return build_phantom_pairs(raw, pbar=pbar)
    return resolve(text, raw)


def _train(args) -> int:
    from preprocessing.layouts.registration import RegistrationDataset

    from ..run import resolve_device
    from .trainer import TrainSettings, train

    if args.network == "vit" and (args.pretrained is None) == (args.init is None):
        raise UserError("--network vit needs exactly one of --pretrained CKPT or --init scratch")
    if args.network == "voxelmorph" and args.pretrained is not None:
        raise UserError("the VoxelMorph baseline trains from scratch; drop --pretrained")
    if args.pretrained is not None and not args.pretrained.is_file():
        raise UserError(f"pretrained checkpoint {args.pretrained} does not exist")
    for flag, value, low in (("--steps", args.steps, 1), ("--feature-size", args.feature_size, 1),
                             ("--save-every", args.save_every, 1), ("--val-every", args.val_every, 0),
                             ("--ncc-kernel", args.ncc_kernel, 1), ("--w-ncc", args.w_ncc, 0),
                             ("--w-diff", args.w_diff, 0), ("--w-dice", args.w_dice, 0)):
        check_range(flag, value, low)
    check_range("--lr", args.lr, 0, low_open=True)
    if args.patch is not None:
        from .network import check_patch

        check_patch(args.patch, "--patch")  # else the model fails after the dataset and the run log are written
    if args.ncc_kernel % 2 == 0:
        raise UserError(f"--ncc-kernel {args.ncc_kernel}: must be odd (a window centred on each voxel)")
    if args.out is not None:
        check_writable(args.out)  # before the phantom dataset is made on first use
    if args.pretrained is not None:  # read (safely) before the phantom dataset is made on first use
        from ..pretrain.checkpoint import load_checkpoint

        load_checkpoint(args.pretrained)
    root = dataset_folder(args.dataset, not args.no_pbar)
    ds = RegistrationDataset(root)
    if args.network == "voxelmorph":
        run = "voxelmorph"
    else:
        run = f"vit_{'pretrained_' + args.pretrained.parent.name if args.pretrained else 'scratch_' + args.preset}"
    run += "_diff" if args.diffeomorphic else ""
    out = check_writable(args.out or nnunet_folder("nnUNet_results") / "MedGMAE_register" / ds.name / run)
    s = TrainSettings(dataset=str(root.resolve()), network=args.network,
                      pretrained=str(args.pretrained.resolve()) if args.pretrained else None, preset=args.preset,
                      patch=args.patch, feature_size=args.feature_size, diffeomorphic=args.diffeomorphic,
                      steps=args.steps, lr=args.lr, w_ncc=args.w_ncc, w_diff=args.w_diff, w_dice=args.w_dice,
                      ncc_kernel=args.ncc_kernel, seed=args.seed, device=str(resolve_device(args.device)),
                      val_every=args.val_every, save_every=args.save_every, out=str(out), pbar=not args.no_pbar)
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(out, "medgmae_register run")  # one writer per run folder
    results = train(s, resume=args.resume)
    print(f"{out}: val mean Dice {results.get('val_mean_dice')} (unregistered {results.get('val_mean_dice_before')})")
    return 0


def _predict(args) -> int:
    from preprocessing.layouts.registration import RegistrationDataset

    from ..run import resolve_device
    from .predict import predict
    from .trainer import load_trained

    load_trained(args.model, resolve_device("cpu"))  # a missing or unsafe model: before the phantom dataset is made
    ds = RegistrationDataset(dataset_folder(args.dataset, not args.no_pbar))
    model_dir = args.model if args.model.is_dir() else args.model.parent
    out = args.out or model_dir / args.split
    from medgmae_plans.runtime.locks import hold_folder

    hold_folder(out, "medgmae_register predict")  # one writer; a refusal leaves no folder with an empty log
    log = setup_run_log(out, "predict", args.verbose)
    predict(args.model, ds, args.split, out, resolve_device(args.device), pbar=not args.no_pbar, log=log.info)
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate

    out = args.out or args.predictions
    log = setup_run_log(out, "evaluate", args.verbose)
    dataset = dataset_folder(args.dataset) if args.dataset else None
    result = evaluate(args.predictions, out, dataset)
    s = result["summary"]
    write_run_json(out, "evaluate", {k: str(v) for k, v in vars(args).items()}, s)
    log.info("mean Dice {} (unregistered {}), % det(J)<=0 {}{}; {}".format(
        _r(s.get("mean_dice")), _r(s.get("mean_dice_before")), _r(s.get("nonpos_jacobian_pct")),
        f", EPE {_r(s['epe_mm'])} mm (unregistered {_r(s.get('epe_mm_before'))})" if "epe_mm" in s else "",
        out / "evaluation.md"))
    return 0


def _r(v):
    return None if v is None else round(float(v), 4)


def _convert(args) -> int:
    from preprocessing.layouts.registration import PREFIX

    name = CONVERTED[args.which]
    target = args.out or nnunet_folder("nnUNet_raw") / (PREFIX + name)
    if args.which == "oasis":
        from preprocessing.convert.oasis import convert_oasis

        convert_oasis(args.source, target, overwrite=args.overwrite)
    else:
        from preprocessing.convert.ixi import convert_ixi

        convert_ixi(args.source, target, overwrite=args.overwrite)
    return 0


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": _train, "predict": _predict, "evaluate": _evaluate, "convert": _convert}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
