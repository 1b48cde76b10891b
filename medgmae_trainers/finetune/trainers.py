"""nnU-Net v2 trainers that fine-tune UNETR (ViT3D encoder + MONAI blocks) from a pretrained encoder.

Trainer names encode initialisation and training fraction, so results folders never collide:

    MedGMAETrainer_<init>_f<pct>[_<tag>]     init: scratch | voxelmae | medgmae | medgmaestar | nnunet
                                             pct: percent with 'p' for '.', e.g. f1, f10, f100, f2p5
                                             tag: optional letters/digits (`--trainer`) to keep other variants apart

The common names (4 inits x f1/f10/f100) exist as module attributes; any other name of that form is
made on first access (module `__getattr__`), which is what nnU-Net's lookup (`hasattr` on each
module of `nnUNet_extTrainer`) and `nnUNetv2_predict -tr NAME` need.

What the trainers change against `nnUNetTrainer` (everything else, data loading, augmentation,
DC+CE loss, checkpoints, validation and its summary.json, DDP, is nnU-Net's):

- settings come from `medgmae_finetune.json` in the fold folder (see `run_record`), read in `__init__`;
  without the file (plain `nnUNetv2_train`) a scratch trainer makes the settings `medgmae_train` would
  give it with no flags, and a pretrained one says in one line that it needs `medgmae_train --pretrained`;
- before nnU-Net sees the plans, the configuration's `architecture.arch_kwargs` are replaced by the
  run's UNETR settings (the pretrained checkpoint's encoder sizes), and its `patch_size` by
  `--patch-size` if given, so the `plans.json` nnU-Net copies into the results folder rebuilds exactly
  this network, and tiles exactly this patch, in `nnUNetv2_predict`; `--export-resampling torch`
  (the default) also switches the probabilities' resampling to nnU-Net's torch function;
- `build_network_architecture` builds UNETR from the plans, without deep supervision (no weights);
- `initialize` loads the pretrained encoder and asserts that every encoder key was loaded;
- `do_split` keeps the nested `--fraction` subset of the fold's training cases (validation unchanged);
- AdamW with layer-wise decay, per-iteration warmup + cosine (`optim`);
- on a CPU with native bf16 (AMX / AVX512-BF16) the training step's forward and loss run under bf16
  autocast, about twice as fast (nnU-Net autocasts on CUDA only; `run.precision` says why);
- checkpoints are written atomically; the final validation can use a coarser sliding-window step
  and no mirroring (CPU budget) without touching what `nnUNetv2_predict` does;
- the run's `seed` draws the new layers' weights and seeds nnU-Net's augmentation workers (nnU-Net
  leaves them unseeded), so replicates differ by their seed and a seed repeats its draws; with more
  than one augmentation process the order batches arrive in still varies (nnU-Net's NonDet augmenter).

The `nnunet` init (`NNUNetBaselineTrainer`) is the anchor row: nnU-Net's own PlainConvUNet with deep
supervision and its SGD + poly schedule, under the same budget, fraction, patch, seed, precision and
validation settings as the UNETR runs.
"""
from __future__ import annotations

import copy
import random
import re
import sys
from pathlib import Path

import numpy as np

import torch
from nnunetv2.paths import nnUNet_results
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from medgmae_plans.runtime.atomic import atomic_path
from medgmae_plans.constants import FROM_SCRATCH, INIT_DISPLAY, INITS
from medgmae_plans.runtime import EXIT_USER_ERROR, progress

from ..run import bf16_autocast, check_finite, native_cpu_bf16
from . import nnunet_hooks
from .encoder_loading import load_encoder, read_pretrained
from .fractions import fraction_tag, select_cases, tag_fraction
from .optim import WarmupCosine, param_groups
from .plainconv import plainconv_architecture
from .run_record import Settings, fold_folder, new_settings, read_record, write_record


# nnU-Net's own torch resampling (its `nnUNetPlannerResEncL_torchres` plans use it) for turning the
# predicted class probabilities back into the original geometry. The default (scikit-image, per
# channel) costs ~45 CPU-s per full phantom case with 16 classes, against ~6 s for this, and is the
# largest part of a CPU validation; 0.05% of the voxels' labels differ. Written into the plans that
# nnU-Net copies into the results folder, so nnUNetv2_predict resamples the same way.
TORCH_PROBABILITY_RESAMPLING = {
    "resampling_fn_probabilities": "resample_torch_fornnunet",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "force_separate_z": None,
                                           "memefficient_seg_resampling": False},
}

NAME_PATTERN = re.compile(rf"^MedGMAETrainer_({'|'.join(INITS)})_(f\d+(?:p\d+)?)(?:_([A-Za-z0-9]+))?$")


def trainer_name(init: str, fraction: float, tag: str | None = None) -> str:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    return f"MedGMAETrainer_{init}_{fraction_tag(fraction)}" + (f"_{tag}" if tag else "")


def parse_trainer_name(name: str) -> tuple[str, float, str | None]:
    """'MedGMAETrainer_medgmae_f10' -> ('medgmae', 0.1, None); ValueError for other names."""
    match = NAME_PATTERN.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a MedGMAE trainer name (MedGMAETrainer_<init>_f<pct>[_<tag>], "
                         f"init one of {INITS})")
    return match.group(1), tag_fraction(match.group(2)), match.group(3)


class MedGMAETrainer(nnUNetTrainer):
    """UNETR fine-tuning; concrete trainers are `MedGMAETrainer_<init>_f<pct>` subclasses."""

    INIT = "scratch"
    FRACTION = 1.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        settings = self._find_settings(plans, configuration, fold, device)
        plans = copy.deepcopy(plans)  # the run's patch and network go into our copy, never the caller's dict
        config = plans["configurations"][configuration]
        if settings.input_patch_size:
            config["patch_size"] = [int(s) for s in settings.input_patch_size]
        if settings.export_resampling == "torch":
            config.update(TORCH_PROBABILITY_RESAMPLING)
        config["architecture"] = self.architecture(config["architecture"], settings)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.medgmae = settings
        self.num_epochs = int(settings.epochs)
        self.num_iterations_per_epoch = int(settings.iterations_per_epoch)
        self.num_val_iterations_per_epoch = max(1, round(self.num_iterations_per_epoch / 5))
        self.initial_lr = float(settings.lr)
        self.use_recipe(settings)
        self.save_every = min(50, max(1, self.num_epochs // 10))
        self._iteration_in_epoch = 0
        self._bar = None
        self.encoder_report = None

    @staticmethod
    def architecture(plans_architecture: dict, settings: Settings) -> dict:
        """The plans' architecture block this run trains (and nnU-Net copies into the results folder)."""
        if not settings.arch_kwargs:
            return plans_architecture
        return {**plans_architecture, "arch_kwargs": dict(settings.arch_kwargs)}

    def use_recipe(self, settings: Settings) -> None:
        """UNETR's: one output (no deep supervision), AdamW's decoder weight decay."""
        self.enable_deep_supervision = False
        self.weight_decay = float(settings.weight_decay_decoder)

    # ---- settings -------------------------------------------------------------------------------
    @classmethod
    def _find_settings(cls, plans: dict, configuration: str, fold, device: torch.device) -> Settings:
        folder = fold_folder(nnUNet_results, plans["dataset_name"], cls.__name__, plans["plans_name"],
                             configuration, fold) if nnUNet_results.is_set() else None
        settings = read_record(folder) if folder is not None else None
        if settings is None:
            if cls.INIT not in FROM_SCRATCH:
                # Plain nnUNetv2_train: the checkpoint path exists only in the file medgmae_train writes.
                # nnU-Net would show an exception as a traceback from deep inside its own code; one
                # line and the toolkit's user-error status say what to do instead.
                print(f"{cls.__name__}: a pretrained init needs its checkpoint; start it with "
                      f"medgmae_train DATASET CONFIGURATION --pretrained CKPT", file=sys.stderr)
                raise SystemExit(EXIT_USER_ERROR)
            settings = new_settings(plans, configuration, fold, cls.__name__, cls.FRACTION, device.type,
                                    init=cls.INIT)
        if settings.trainer != cls.__name__ or settings.init != cls.INIT or \
                abs(float(settings.fraction) - cls.FRACTION) > 1e-9:
            raise RuntimeError(f"{folder}/medgmae_finetune.json describes {settings.trainer} "
                               f"(init {settings.init}, fraction {settings.fraction}), not {cls.__name__}")
        return settings

    def _record(self, **changes) -> None:
        """Update medgmae_finetune.json (rank 0 only; atomic)."""
        for key, value in changes.items():
            setattr(self.medgmae, key, value)
        if self.local_rank == 0:
            write_record(self.output_folder, self.medgmae)

    # ---- network --------------------------------------------------------------------------------
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = False):
        """UNETR from the plans' architecture block; never deep supervision, never pretrained weights."""
        return get_network_from_plans(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, allow_init=True,
                                      deep_supervision=False)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """UNETR has one output; nothing to switch."""

    def _bare_network(self) -> torch.nn.Module:
        net = self.network.module if self.is_ddp else self.network
        return getattr(net, "_orig_mod", net)

    def initialize(self):
        seed = int(self.medgmae.seed)  # before the network is built: its new layers' weights
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        super().initialize()
        if self.medgmae.pretrained_checkpoint:
            # Every rank loads the same file, so ranks agree although DDP wrapped the network already.
            pre = read_pretrained(self.medgmae.pretrained_checkpoint)
            self.encoder_report = load_encoder(self._bare_network(), pre, log=self.print_to_log_file)
            if self.local_rank == 0:
                self._record(results={**self.medgmae.results, "encoder_loading": {
                    "checkpoint": self.encoder_report["checkpoint"], "loaded": len(self.encoder_report["loaded"]),
                    "skipped": len(self.encoder_report["skipped"]),
                    "pos_embed_interpolated": self.encoder_report["pos_embed_interpolated"]}})

    # ---- data -----------------------------------------------------------------------------------
    def get_dataloaders(self):
        with nnunet_hooks.seeded_augmenter(int(self.medgmae.seed)):
            return super().get_dataloaders()

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        subset = select_cases(tr_keys, self.FRACTION, self.medgmae.fraction_seed)
        self.print_to_log_file(f"fraction {self.FRACTION}: training on {len(subset)} of {len(tr_keys)} cases: "
                               f"{subset}; {len(val_keys)} validation cases")
        self._record(train_cases=list(subset), val_cases=[str(k) for k in val_keys])
        return subset, val_keys

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's augmentation, without mirroring when the run says so (as nnU-Net's own
        `nnUNetTrainerNoMirroring`): a mirrored abdomen swaps left and right organs, which a short run
        then has to learn to tell apart by context; the predictor reads the same axes from the checkpoint."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.medgmae.mirroring:
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        s = self.medgmae
        groups = param_groups(self.network, layer_decay=s.layer_decay, wd_encoder=s.weight_decay_encoder,
                              wd_decoder=s.weight_decay_decoder)  # one rule for every init (optim.py)
        optimizer = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.999))
        total = self.num_epochs * self.num_iterations_per_epoch
        scheduler = WarmupCosine(optimizer, s.lr, total, round(s.warmup_fraction * total),
                                 self.num_iterations_per_epoch)
        return optimizer, scheduler

    def on_train_epoch_start(self):
        self._iteration_in_epoch = 0
        super().on_train_epoch_start()
        self._bar = progress(total=self.num_iterations_per_epoch, desc=f"epoch {self.current_epoch}",
                             enabled=self.medgmae.progress_bar and self.local_rank == 0, leave=False)

    def train_step(self, batch: dict) -> dict:
        self.schedule(self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch)
        self._iteration_in_epoch += 1
        out = self._cpu_bf16_step(batch) if self._cpu_bf16() else super().train_step(batch)
        self._check_finite(out["loss"], out.pop("grad_norm", None))
        if self._bar is not None:
            self._bar.update()
            self._bar.set_postfix(loss=f"{float(out['loss']):.4f}")
        return out

    def _check_finite(self, loss, grad_norm: float | None = None) -> None:
        """A diverged run fails, as the run core's loops do (`run.check_finite`): a non-finite loss, or
        (without nnU-Net's fp16 grad scaler, which skips such steps by design) a non-finite gradient, ends
        the run with one line naming the iteration and the lr; nnU-Net's final checkpoint is never written.
        `grad_norm` is the step's own clipping norm where our step computed it (the CPU bf16 step);
        nnU-Net's train_step discards its, so then it is computed here."""
        if grad_norm is None and self.grad_scaler is None:
            grads = [p.grad.detach() for p in self.network.parameters() if p.grad is not None]
            if grads:
                grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
        iteration = self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch
        check_finite(f"iteration {iteration} (epoch {self.current_epoch})", self.optimizer.param_groups[0]["lr"],
                     Path(self.output_folder) / "checkpoint_latest.pth", float(np.asarray(loss, dtype=np.float64)),
                     grad_norm)

    def schedule(self, iteration: int) -> None:
        """Warmup + cosine, set per iteration."""
        self.lr_scheduler.set_iteration(iteration)

    def _cpu_bf16(self) -> bool:
        return self.device.type == "cpu" and bool(self.medgmae.cpu_bf16) and native_cpu_bf16()

    def _cpu_bf16_step(self, batch: dict) -> dict:
        """nnU-Net's CPU train_step with the forward and loss under bf16 autocast (backward outside it)."""
        data, target = batch["data"].to(self.device), batch["target"]
        target = [t.to(self.device) for t in target] if isinstance(target, list) else target.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with bf16_autocast(self.device, cpu=True):
            loss = self.loss(self.network(data), target)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy(), "grad_norm": float(grad_norm)}

    def on_train_epoch_end(self, train_outputs):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        super().on_train_epoch_end(train_outputs)

    # ---- checkpoints and validation ------------------------------------------------------------
    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        with atomic_path(filename) as tmp:  # nnU-Net's torch.save writes in place
            super().save_checkpoint(str(tmp))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, with a checkpoint file read as tensors and plain data only (`--continue`, `--c`):
        nnU-Net's own `torch.load(weights_only=False)` would run whatever a planted pickle asks."""
        if not isinstance(filename_or_checkpoint, dict):
            from medgmae_plans.runtime.safe_load import load_torch

            filename_or_checkpoint = load_torch(filename_or_checkpoint, "nnU-Net checkpoint")
        super().load_checkpoint(filename_or_checkpoint)

    def perform_actual_validation(self, save_probabilities: bool = False):
        s = self.medgmae
        self.print_to_log_file(f"final validation: sliding-window step {s.val_step_size}, "
                               f"mirroring {'on' if s.val_mirroring else 'off'}")
        with nnunet_hooks.validation_predictor(float(s.val_step_size), bool(s.val_mirroring)):
            super().perform_actual_validation(save_probabilities)


class NNUNetBaselineTrainer(MedGMAETrainer):
    """Table 1's anchor: nnU-Net's PlainConvUNet (deep supervision) and its SGD + poly schedule, trained
    under the MedGMAE run's budget, fraction, patch, seed, precision and validation settings."""

    INIT = "nnunet"

    @staticmethod
    def architecture(plans_architecture: dict, settings: Settings) -> dict:
        return plainconv_architecture(settings.arch_kwargs)

    def use_recipe(self, settings: Settings) -> None:
        """nnU-Net's: deep supervision and its weight decay stay as nnUNetTrainer set them."""

    build_network_architecture = staticmethod(nnUNetTrainer.build_network_architecture)
    set_deep_supervision_enabled = nnUNetTrainer.set_deep_supervision_enabled
    configure_optimizers = nnUNetTrainer.configure_optimizers

    def schedule(self, iteration: int) -> None:
        """nnU-Net's poly schedule steps once per epoch, in on_train_epoch_start."""


_CLASSES: dict[str, type] = {}


def trainer_class(name: str) -> type:
    """The trainer class for a `MedGMAETrainer_<init>_f<pct>[_<tag>]` name (made once, then cached)."""
    if name not in _CLASSES:
        init, fraction, _ = parse_trainer_name(name)
        base = NNUNetBaselineTrainer if init == NNUNetBaselineTrainer.INIT else MedGMAETrainer
        cls = type(name, (base,), {"INIT": init, "FRACTION": fraction, "__module__": __name__,
                                   "__doc__": f"Fine-tuning, init {INIT_DISPLAY[init]}, "
                                              f"{fraction * 100:g}% of the training cases."})
        cls.__qualname__ = name
        _CLASSES[name] = cls
    return _CLASSES[name]


for _init in INITS:
    for _fraction in (0.01, 0.1, 1.0):
        _name = trainer_name(_init, _fraction)
        globals()[_name] = trainer_class(_name)


def __getattr__(name: str):
    if NAME_PATTERN.match(name):
        return trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MedGMAETrainer", "NNUNetBaselineTrainer", "trainer_class", "trainer_name", "parse_trainer_name", "INITS",
           *[n for n in list(globals()) if NAME_PATTERN.match(n)]]
