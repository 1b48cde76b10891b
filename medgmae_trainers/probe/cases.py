"""The cases a probe reads, on the configuration's preprocessed grid.

Training and validation cases are the fold's, read from nnU-Net's preprocessed folder; the training
cases are the nested `--fraction` subset `medgmae_train` trains on (`finetune.fractions`: nnU-Net's
split, then `select_cases`). Test cases (`imagesTs`/`labelsTs`) are not preprocessed by nnU-Net, so
they go through the same `MedGMAEPreprocessor` in memory, with the plans and `dataset.json` (and so
the reorienting reader) the training cases were preprocessed with. Labels outside the image's nonzero
crop, which nnU-Net marks -1, count as background.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae_plans.runtime import UserError

from ..finetune.fractions import fold_cases, select_cases


@dataclass
class ProbeCase:
    name: str
    image: np.ndarray   # [D, H, W] float32, normalised as the plans say
    seg: np.ndarray     # [D, H, W] int16 label map on the same grid


@dataclass
class FoldCases:
    train: list[str]        # the fraction's training cases, in `select_cases` order
    val: list[str]
    fold_train: int         # the fold's training cases before the fraction


def probe_cases(preprocessed_dataset: Path, data_folder: Path, fold, fraction: float, fraction_seed: int) -> FoldCases:
    """The fold's cases as `medgmae_train` uses them for `fraction`."""
    train, val = fold_cases(preprocessed_dataset, data_folder, fold)
    return FoldCases(select_cases(train, fraction, fraction_seed), list(val), len(train))


def _case(name: str, data: np.ndarray, seg: np.ndarray, where) -> ProbeCase:
    data, seg = np.asarray(data), np.asarray(seg)
    if data.ndim != 4 or data.shape[0] != 1 or seg.shape != data.shape:
        raise UserError(f"{where}: expected one CT channel and a label map of the same shape, got image "
                        f"{data.shape} and labels {seg.shape}")
    return ProbeCase(name, data[0].astype(np.float32), np.maximum(seg[0], 0).astype(np.int16))


def load_preprocessed(data_folder: Path, names: Sequence[str]) -> list[ProbeCase]:
    """Cases of nnU-Net's preprocessed folder (image and labels); a missing or unreadable one is a `UserError`."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    names = list(names)
    try:
        dataset = infer_dataset_class(str(data_folder))(str(data_folder), identifiers=names)
    except Exception as err:
        raise UserError(f"{data_folder}: cannot read the preprocessed cases ({type(err).__name__}: {err})") from None
    cases = []
    for name in names:
        try:
            data, seg, _, _ = dataset.load_case(name)
            cases.append(_case(name, data[:], seg[:], Path(data_folder) / name))
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"{Path(data_folder) / name}: cannot read the preprocessed case "
                            f"({type(err).__name__}: {err})") from None
    return cases


def preprocess_raw(name: str, images: Sequence[Path], label: Path, plans: dict, configuration: str,
                   dataset_json: dict) -> ProbeCase:
    """A raw case (e.g. a test case) preprocessed in memory as `medgmae_plan_and_preprocess` does its cases."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from preprocessing.preprocess import MedGMAEPreprocessor

    manager = PlansManager(plans)
    try:
        data, seg, _ = MedGMAEPreprocessor(verbose=False).run_case(
            [str(p) for p in images], str(label), manager, manager.get_configuration(configuration), dataset_json)
    except Exception as err:
        raise UserError(f"{images[0]}: preprocessing failed ({type(err).__name__}: {err})") from None
    return _case(name, data, seg, images[0])
