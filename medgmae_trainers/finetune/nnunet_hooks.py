"""The one place where the toolkit replaces a name inside nnU-Net, and only for the duration of a call.

`nnUNetTrainer` builds two objects inline, with arguments we must set differently:

- `perform_actual_validation` makes `nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, ...)`;
  the CPU's final validation needs step 1 and no mirroring (`run_record.VALIDATION_BY_DEVICE`).
- `get_dataloaders` makes `NonDetMultiThreadedAugmenter(..., seeds=None)`, whose workers then seed
  numpy from the OS; a replicate must get the same augmentation from the same `--seed`.

- `nnUNetPredictor.initialize_from_trained_model_folder` reads each fold's checkpoint with
  `torch.load(weights_only=False)`, which runs whatever a planted pickle asks; `medgmae_predict` reads
  them safely first and hands nnU-Net those states (`preloaded_checkpoints`).

Copying those long methods would fork nnU-Net's code; instead, `replaced` points the module's name at
our replacement while the call runs and puts the original back afterwards, also when the call
raises. Nothing else is touched: `nnUNetv2_predict` and other trainers see nnU-Net's own classes.
The trainer hooks are tested in tests/test_finetune.py (the subclass' arguments, and the restore),
the checkpoint hook in tests/test_bad_input_untrusted.py (a planted payload never runs).
"""
from __future__ import annotations

import contextlib
import os
import sys
from types import ModuleType
from typing import Callable, Iterator

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

TRAINER_MODULE = sys.modules[nnUNetTrainer.__module__]  # where nnUNetTrainer looks the two names up


@contextlib.contextmanager
def replaced(name: str, replacement: type | Callable, module: ModuleType = TRAINER_MODULE) -> Iterator[None]:
    """`module.<name>` is `replacement` inside the block, the original again after it."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def validation_predictor(step_size: float, mirroring: bool):
    """The final validation's predictor with our sliding-window step and mirroring."""
    original = TRAINER_MODULE.nnUNetPredictor

    class Predictor(original):
        def __init__(self, *args, **kwargs):
            kwargs.update(tile_step_size=step_size, use_mirroring=mirroring)
            super().__init__(*args, **kwargs)

    return replaced("nnUNetPredictor", Predictor)


def seeded_augmenter(seed: int):
    """Augmentation processes seeded from the run's seed; training and validation loaders get disjoint seeds."""
    original = TRAINER_MODULE.NonDetMultiThreadedAugmenter
    made = []

    class Augmenter(original):
        def __init__(self, *args, num_processes: int, **kwargs):
            first = 1000 * seed + 100 * len(made)
            made.append(self)
            super().__init__(*args, num_processes=num_processes, **{
                **kwargs, "seeds": [first + i for i in range(num_processes)]})

    return replaced("NonDetMultiThreadedAugmenter", Augmenter)


def preloaded_checkpoints(loaded: dict[str, dict]):
    """`torch.load` answers with the states in `loaded` (absolute path -> state, read safely before);
    a file nnU-Net asks for that is not among them is refused, never unpickled."""
    import torch

    from medgmae_plans.runtime import UserError

    def load(path, *args, **kwargs):
        key = os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None
        if key not in loaded:
            raise UserError(f"{path}: nnU-Net asked for a checkpoint that was not read safely")
        return loaded[key]

    return replaced("load", load, module=torch)
