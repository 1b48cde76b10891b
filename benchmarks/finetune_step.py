"""What one fine-tuning iteration costs: the network step alone, the whole `medgmae_train` iteration,
and nnU-Net's own `PlainConvUNet` at the same patch, in one run.

    python -m benchmarks.finetune_step [-d Phantom] [-c 3d_lowres 3d_fullres] [--iterations 8]

For each configuration (its plans' patch: 48^3 at 3 mm, 96^3 at 1.5 mm), built as `medgmae_train`
builds them (nnU-Net trainers on the dataset's preprocessed data, batch 2, 16 classes for the phantom):
- `unetr step`: `train_step` of the tiny-preset UNETR trainer on a batch already in memory, with the
  augmentation workers stopped (forward, DC+CE loss, backward, clipping, AdamW);
- `iteration`: the same trainer's `train_step(next(dataloader_train))` with nnU-Net's background
  augmentation running beside it: what a `medgmae_train` iteration costs. Target: <= 1.3x the step;
- `plainconv step`: nnU-Net's default trainer and network (PlainConvUNet, 32..320 features, its own
  pooling plan for the patch, deep supervision, SGD) on the same patch, as the anchor.
Nothing is written outside a temporary results folder. Needs the dataset preprocessed for each
configuration (`medgmae_plan_and_preprocess -d Phantom -c 3d_lowres 3d_fullres`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from copy import deepcopy
from pathlib import Path

NAME = "MedGMAETrainer_scratch_f10_bench"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_step", description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset", default="Phantom", help="preprocessed dataset (default Phantom)")
    p.add_argument("-c", "--configurations", nargs="+", default=["3d_lowres", "3d_fullres"],
                   help="configurations whose patch to time (default: 3d_lowres 3d_fullres)")
    p.add_argument("--iterations", type=int, default=8, help="timed iterations per measurement (default 8)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def plainconv_plans(plans: dict, configuration: str) -> dict:
    """The plans with nnU-Net's default PlainConvUNet for the configuration's patch and spacing."""
    from medgmae_trainers.finetune.plainconv import plainconv_arch_kwargs, plainconv_architecture

    plans = deepcopy(plans)
    config = plans["configurations"][configuration]
    config["architecture"] = plainconv_architecture(plainconv_arch_kwargs(config["spacing"], config["patch_size"]))
    return plans


def make_trainer(kind: str, plans: dict, configuration: str, dataset_json: dict, results: Path):
    """`medgmae_train`'s tiny scratch UNETR trainer (its record written first), or nnU-Net's default one."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from medgmae_trainers.finetune.run_record import fold_folder, new_settings, write_record
    from medgmae_trainers.finetune.trainers import trainer_class

    if kind == "unetr":
        settings = new_settings(plans, configuration, 0, NAME, 0.1, "cpu", preset="tiny", progress_bar=False)
        write_record(fold_folder(results, plans["dataset_name"], NAME, plans["plans_name"], configuration, 0),
                     settings)
        cls = trainer_class(NAME)
    else:
        plans, cls = plainconv_plans(plans, configuration), nnUNetTrainer
    trainer = cls(plans={**deepcopy(plans), "continue_training": False}, configuration=configuration, fold=0,
                  dataset_json=dataset_json, device=torch.device("cpu"))
    trainer.print_to_log_file = lambda *a, **k: None  # the figures are this script's output
    return trainer


def seconds(step, n: int) -> float:
    """Median wall time of `step()` over n calls, after one untimed call."""
    step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_trainer(trainer, n: int, with_data: bool) -> dict[str, float]:
    """Seconds per iteration with the augmentation workers feeding it, then per step on a held batch."""
    trainer.on_train_start()
    trainer.network.train()
    figures = {}
    if with_data:
        figures["iteration_s"] = seconds(lambda: trainer.train_step(next(trainer.dataloader_train)), n)
    batch = next(trainer.dataloader_train)
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()  # the workers stop: the step alone has the cores
    figures["step_s"] = seconds(lambda: trainer.train_step(batch), n)
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="finetune_step_") as tmp:
        os.environ["nnUNet_results"] = tmp  # before nnU-Net is imported: it reads its folders once
        from medgmae_plans.datasets import resolve_dataset
        from medgmae_plans.runtime.paths import ensure_nnunet_env
        from medgmae_plans.runtime import UserError

        folders = ensure_nnunet_env()
        dataset = resolve_dataset(args.dataset)
        base = folders["nnUNet_preprocessed"] / dataset
        plans = json.loads((base / "MedGMAEPlans.json").read_text())
        dataset_json = json.loads((base / "dataset.json").read_text())
        import torch

        rows = {}
        for configuration in args.configurations:
            config = plans["configurations"].get(configuration)
            if config is None or not (base / config["data_identifier"]).is_dir():
                raise UserError(f"{base}: no preprocessed {configuration}; run medgmae_plan_and_preprocess "
                                f"-d {args.dataset} -c {configuration}")
            unetr = time_trainer(make_trainer("unetr", plans, configuration, dataset_json, Path(tmp)),
                                 args.iterations, with_data=True)
            plain = time_trainer(make_trainer("plainconv", plans, configuration, dataset_json, Path(tmp)),
                                 max(2, args.iterations // 2), with_data=False)
            rows[configuration] = {"patch": config["patch_size"], "torch_threads": torch.get_num_threads(),
                                   "unetr_step_s": unetr["step_s"], "iteration_s": unetr["iteration_s"],
                                   "plainconv_step_s": plain["step_s"],
                                   "iteration_over_step": unetr["iteration_s"] / unetr["step_s"],
                                   "plainconv_over_unetr": plain["step_s"] / unetr["step_s"]}
    print(f"{'configuration':>13} {'patch':>6} {'unetr step':>11} {'iteration':>10} {'ratio':>6} "
          f"{'plainconv':>10} {'plain/unetr':>12}")
    for name, r in rows.items():
        print(f"{name:>13} {r['patch'][0]:>5}^3 {r['unetr_step_s']:>10.3f}s {r['iteration_s']:>9.3f}s "
              f"{r['iteration_over_step']:>5.2f}x {r['plainconv_step_s']:>9.3f}s {r['plainconv_over_unetr']:>11.2f}x")
    print("target: iteration <= 1.3x the unetr step")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
