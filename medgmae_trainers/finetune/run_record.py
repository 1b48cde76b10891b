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

The defaults are the `Settings` fields' and nowhere else: `medgmae_train` passes `new_settings` only
the flags the user gave, and a scratch trainer started by plain `nnUNetv2_train` without the file
calls `new_settings` with nothing given, so both train the same run (a pretrained init needs the
checkpoint path, so it asks for `medgmae_train --pretrained`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from medgmae_plans.runtime.atomic import write_json_atomic
from medgmae_plans.configurations import DEFAULT_CONFIGURATION, PLANS_NAME
from medgmae_plans.constants import FINETUNE_RECORD, INIT_DISPLAY
from medgmae_plans.runtime import UserError

from ..networks.presets import UNETR_FEATURE_SIZE
from ..pretrain.pretrained import PretrainedEncoder
from .encoder_loading import preset_encoder, unetr_arch_kwargs
from .fractions import FRACTION_SEED
from .plainconv import NNUNET_LR, plainconv_arch_kwargs

RECORD = FINETUNE_RECORD

# Settings that define a run: `--continue` must use the same values.
DEFINING = ("dataset", "configuration", "plans", "fold", "trainer", "init", "pretrained_checkpoint", "preset",
            "patch_size", "input_patch_size", "fraction", "fraction_seed", "epochs", "iterations_per_epoch", "lr", "layer_decay",
            "arch_kwargs", "export_resampling", "mirroring", "seed")


# The final validation's sliding window by training device: nnU-Net's own (step 0.5, mirroring) on a
# GPU; on a CPU tiles one patch apart and no mirroring, each up to 8x fewer network passes in 3D
# (half the step per axis; 8 mirrorings), which is what a CPU budget allows.
VALIDATION_BY_DEVICE = {"cuda": {"val_step_size": 0.5, "val_mirroring": True},
                        "cpu": {"val_step_size": 1.0, "val_mirroring": False}}


@dataclass
class Settings:
    """One fine-tuning run. The field defaults are the toolkit's defaults (medgmae_train's --help shows them)."""
    dataset: str = ""
    configuration: str = DEFAULT_CONFIGURATION
    plans: str = PLANS_NAME
    fold: object = 0
    trainer: str = ""
    init: str = "scratch"
    init_display: str = "Scratch"
    pretrained_checkpoint: str | None = None
    pretrained_decoder: str | None = None
    preset: str | None = "base"            # scratch's encoder (the plans' ViT-B); pretrained: the checkpoint's
    patch_size: int | None = None
    input_patch_size: list | None = None   # nnU-Net's patch (voxels) when --patch-size overrides the plans'
    fraction: float = 1.0
    fraction_seed: int = FRACTION_SEED
    seed: int = 0                          # weights of new layers, batch sampling, augmentation (see trainers)
    epochs: int = 1000
    iterations_per_epoch: int = 250
    lr: float = 3e-4
    layer_decay: float = 1.0               # the same for every init (optim.py); 1.0: none, the paper's AdamW
    weight_decay_encoder: float = 0.05
    weight_decay_decoder: float = 0.05
    warmup_fraction: float = 0.05
    mirroring: bool = True                 # nnU-Net's mirroring on all axes, in training and at inference
    cpu_bf16: bool = True                  # bf16 autocast for CPU training steps where the CPU has native bf16
    val_step_size: float | None = None     # None: by the training device (VALIDATION_BY_DEVICE)
    val_mirroring: bool | None = None      # None: by the training device
    progress_bar: bool = True
    export_resampling: str = "torch"       # probabilities: nnU-Net's resample_torch_fornnunet; "plans": the plans'
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


def new_settings(plans: dict, configuration: str, fold, trainer: str, fraction: float, device: str, *,
                 pretrained: PretrainedEncoder | None = None, preset: str | None = None, patch: int | None = None,
                 patch_size: int | None = None, feature_size: int | None = None, init: str = "scratch",
                 **given) -> Settings:
    """A new run's settings: the ones given (Settings fields; None means not given), the rest from the
    `Settings` defaults, the plans, and the encoder (the checkpoint's, or the preset's for scratch).
    `init` is "scratch" or "nnunet" without a checkpoint (nnU-Net's PlainConvUNet and its SGD at
    nnU-Net's learning rate unless `lr` is given; the UNETR arguments do not apply to it).

    `preset` names a scratch run's encoder sizes (a pretrained run has the checkpoint's), `patch` is
    the ViT patch (default: the checkpoint's, or for scratch the plans'), `patch_size` the cubic fine-tuning patch in voxels (default: the plans'),
    `feature_size` the UNETR decoder width (default: the preset's `UNETR_FEATURE_SIZE`, else the plans').
    """
    given = {key: value for key, value in given.items() if value is not None}
    config = plans["configurations"][configuration]
    img_size = [patch_size] * 3 if patch_size else [int(s) for s in config["patch_size"]]
    if pretrained is None and init == "nnunet":
        given.setdefault("lr", NNUNET_LR)
        preset, arch = None, plainconv_arch_kwargs(config["spacing"], img_size)
    else:
        preset, arch = _unetr(config, img_size, patch_size, pretrained, preset, patch, feature_size, given)
        init = pretrained.init if pretrained is not None else "scratch"
    validation = VALIDATION_BY_DEVICE["cuda" if device == "cuda" else "cpu"]
    return Settings(**{
        **validation, **given, "dataset": plans["dataset_name"], "configuration": configuration,
        "plans": plans["plans_name"], "fold": fold, "trainer": trainer, "init": init,
        "init_display": INIT_DISPLAY[init], "preset": preset, "patch_size": arch.get("patch_size"),
        "input_patch_size": [patch_size] * 3 if patch_size else None, "fraction": fraction, "arch_kwargs": arch})


def _unetr(config: dict, img_size: list, patch_size, pretrained, preset, patch, feature_size, given: dict):
    """(preset, UNETR arch_kwargs) of a scratch or pretrained run; records the checkpoint in `given`."""
    plan_arch = config["architecture"]["arch_kwargs"]
    if pretrained is not None:
        preset, encoder = pretrained.metadata.get("preset"), pretrained.encoder_config
        given.update(pretrained_checkpoint=str(pretrained.path), pretrained_decoder=pretrained.metadata["decoder_type"])
    else:
        preset = preset or Settings.preset
        # the plans' token patch (16 at 1.5 mm, 8 at 3 mm): the configuration's token grid, whatever the preset
        encoder = preset_encoder(preset, patch or int(plan_arch["patch_size"]))
    feature_size = feature_size or UNETR_FEATURE_SIZE.get(preset, plan_arch["feature_size"])
    arch = unetr_arch_kwargs(encoder, img_size, feature_size, plan_arch.get("norm_name", "instance"))
    if any(s % arch["patch_size"] for s in img_size):
        raise UserError(f"patch size {img_size} is not a multiple of the ViT patch {arch['patch_size']}"
                        + ("" if patch_size else " (plans); pass --patch-size"))
    return preset, arch


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
