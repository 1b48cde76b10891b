"""`medgmae_finetune.json`: the fine-tuning settings, and how they reach the trainer.

nnU-Net creates a trainer as `Trainer(plans, configuration, fold, dataset_json, device)` and nothing
else: in `nnUNetv2_train`, in each process its DDP path spawns (`mp.spawn` re-creates the trainer
from its name), and for `--c`. So settings that are not in the trainer's name (the pretrained
checkpoint, preset, epochs, learning rate...) travel in a file beside the results:

    $nnUNet_results/<Dataset>/<Trainer>__<Plans>__<configuration>/fold_<k>/medgmae_finetune.json

`medgmae_train` writes it atomically before nnU-Net starts; every trainer instance reads it in
`__init__` from the folder that nnU-Net itself derives from (trainer name, plans, configuration,
fold). A file is visible to spawned processes and survives for `--continue`, unlike environment
variables (lost between sessions) or class attributes (lost in spawned processes). The trainer
adds the case lists when it splits; the command completes the file with the results at the end.
A trainer started by plain `nnUNetv2_train` without the file falls back to `Settings()` defaults
(scratch only: a pretrained init needs the checkpoint path, so it asks for `medgmae_train`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from medgmae_plans.atomic import write_json_atomic

RECORD = "medgmae_finetune.json"

# Settings that define a run: `--continue` must use the same values.
DEFINING = ("dataset", "configuration", "plans", "fold", "trainer", "init", "pretrained_checkpoint", "preset",
            "patch_size", "input_patch_size", "fraction", "fraction_seed", "epochs", "iterations_per_epoch", "lr", "layer_decay",
            "arch_kwargs", "export_resampling")


@dataclass
class Settings:
    dataset: str = ""
    configuration: str = "3d_fullres"
    plans: str = "MedGMAEPlans"
    fold: object = 0
    trainer: str = ""
    init: str = "scratch"
    init_display: str = "Scratch"
    pretrained_checkpoint: str | None = None
    pretrained_decoder: str | None = None
    preset: str | None = None
    patch_size: int | None = None
    input_patch_size: list | None = None   # nnU-Net's patch (voxels) when --patch-size overrides the plans'
    fraction: float = 1.0
    fraction_seed: int = 12345
    epochs: int = 1000
    iterations_per_epoch: int = 250
    lr: float = 3e-4
    layer_decay: float = 0.75
    weight_decay_encoder: float = 0.01
    weight_decay_decoder: float = 0.05
    warmup_fraction: float = 0.05
    val_step_size: float = 0.5
    val_mirroring: bool = True
    progress_bar: bool = True
    export_resampling: str = "plans"       # "torch": nnU-Net's resample_torch_fornnunet for the probabilities
    arch_kwargs: dict | None = None
    train_cases: list = field(default_factory=list)
    val_cases: list = field(default_factory=list)
    status: str = "created"
    results: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Settings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def fold_folder(results_root, dataset: str, trainer: str, plans: str, configuration: str, fold) -> Path:
    """nnU-Net's fold folder for these names (as nnUNetTrainer.__init__ builds it)."""
    return Path(results_root) / dataset / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"


def read_record(folder) -> Settings | None:
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    return Settings.from_json(json.loads(path.read_text()))


def write_record(folder, settings: Settings) -> Path:
    path = Path(folder) / RECORD
    write_json_atomic(path, settings.to_json())
    return path


def differences(old: Settings, new: Settings) -> list[str]:
    """The defining settings in which two runs differ, as 'key: old -> new'."""
    out = []
    for key in DEFINING:
        a, b = getattr(old, key), getattr(new, key)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out
