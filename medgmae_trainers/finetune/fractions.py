"""`--fraction`: nested, seeded subsets of a fold's training cases.

The fold's training cases are sorted, shuffled once with a fixed seed, and a fraction f keeps the
first `max(1, round(f * n))` of that order (round half up). Every fraction therefore takes a prefix
of the same permutation, so the 1% cases are inside the 10% cases, inside 100%, and the same
command picks the same cases on every machine. Validation cases are never touched.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae_plans.runtime import UserError

FRACTION_SEED = 12345  # nnU-Net's own split seed


def parse_fraction(value) -> float:
    """A float in (0, 1]; anything else is a `UserError`."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--fraction {value!r} is not a number; give a fraction in (0, 1], e.g. 0.1") from None
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise UserError(f"--fraction {value} is outside (0, 1]; e.g. 0.01, 0.1 or 1.0")
    pct = round(fraction * 100, 6)  # what a trainer name's tag holds (fraction_tag)
    if pct <= 0 or abs(pct / 100 - fraction) > 1e-9:
        raise UserError(f"--fraction {value}: a trainer name holds the percentage to 6 decimals (at least "
                        "0.00000001); give e.g. 0.01, 0.1 or 1.0")
    return fraction


def fraction_tag(fraction: float) -> str:
    """The trainer-name tag: 0.1 -> 'f10', 0.01 -> 'f1', 1.0 -> 'f100', 0.025 -> 'f2p5'."""
    pct = f"{round(parse_fraction(fraction) * 100, 6):.6f}".rstrip("0").rstrip(".")
    return "f" + pct.replace(".", "p")


def tag_fraction(tag: str) -> float:
    """Inverse of `fraction_tag`: 'f2p5' -> 0.025."""
    if not tag.startswith("f"):
        raise ValueError(f"fraction tag {tag!r} does not start with 'f'")
    return parse_fraction(float(tag[1:].replace("p", ".")) / 100)


def num_selected(n: int, fraction: float) -> int:
    """How many of n cases a fraction keeps: round half up, at least one, at most n."""
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def select_cases(cases: Sequence[str], fraction: float, seed: int = FRACTION_SEED) -> list[str]:
    """The nested subset of `cases` for `fraction` (in the shuffled order; deterministic)."""
    if not cases:
        raise UserError("the fold has no training cases to take a fraction of")
    order = [str(c) for c in np.random.default_rng(seed).permutation(sorted(str(c) for c in cases))]
    return order[:num_selected(len(order), fraction)]



NNUNET_FOLDS = 5  # nnU-Net's default cross-validation (KFold(5) on the training cases)
NNUNET_SPLIT_SEED = 12345  # the seed of that split in nnU-Net's do_split


def fold_training_cases(preprocessed_dataset: Path, fold) -> int | None:
    """How many training cases `fold` has (before `--fraction`), refusing a fold nnU-Net would not
    train as asked; None when the dataset's case count cannot be read (nnU-Net then says why).

    With no `splits_final.json`, nnU-Net makes a 5-fold split: with fewer than 5 cases that fails
    deep inside scikit-learn, and for a fold beyond 4 nnU-Net falls back to a random 80:20 split
    without saying so. A `splits_final.json` of one's own sets the folds.
    """
    splits_file = Path(preprocessed_dataset) / "splits_final.json"
    cases = _num_training(Path(preprocessed_dataset) / "dataset.json")
    if fold == "all":
        return cases
    if splits_file.is_file():
        try:
            splits = json.loads(splits_file.read_text())
            train = [len(split["train"]) for split in splits]
        except (ValueError, TypeError, KeyError) as err:
            raise UserError(f"{splits_file}: not a list of {{'train': [...], 'val': [...]}} folds ({err})") from None
        if not 0 <= fold < len(train):
            raise UserError(f"--fold {fold}: must be 0..{len(train) - 1} ({splits_file} has {len(train)} folds) "
                            "or 'all'")
        return train[fold]
    if not 0 <= fold < NNUNET_FOLDS:
        raise UserError(f"--fold {fold}: must be 0..{NNUNET_FOLDS - 1} (nnU-Net's {NNUNET_FOLDS}-fold "
                        "cross-validation) or 'all'")
    if cases is None:
        return None
    if cases < NNUNET_FOLDS:
        raise UserError(f"--fold {fold}: the dataset has {cases} training case(s), fewer than nnU-Net's "
                        f"{NNUNET_FOLDS}-fold cross-validation needs; train on all of them with --fold all")
    # KFold gives the first `cases % 5` folds one validation case more
    return cases - (cases // NNUNET_FOLDS + (1 if fold < cases % NNUNET_FOLDS else 0))


def fold_cases(preprocessed_dataset: Path, data_folder: Path, fold) -> tuple[list[str], list[str]]:
    """(training, validation) case ids of `fold`, as nnU-Net's `nnUNetTrainer.do_split` makes them
    (before `--fraction`), without writing `splits_final.json`: the dataset's own file when it has one,
    else nnU-Net's seeded 5-fold split of the sorted cases of `data_folder`; `all` trains and validates on
    every case. A fold nnU-Net would not train as asked is refused (`fold_training_cases`)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    fold_training_cases(preprocessed_dataset, fold)
    cases = sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))
    if fold == "all":
        return cases, cases
    splits_file = Path(preprocessed_dataset) / "splits_final.json"
    splits = (json.loads(splits_file.read_text()) if splits_file.is_file()
              else generate_crossval_split(cases, seed=NNUNET_SPLIT_SEED, n_splits=NNUNET_FOLDS))
    return [str(c) for c in splits[fold]["train"]], [str(c) for c in splits[fold]["val"]]


def _num_training(dataset_json: Path) -> int | None:
    try:
        return int(json.loads(dataset_json.read_text())["numTraining"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # no numTraining (it is optional for us): the preprocessed cases, as nnU-Net's split will see them
    cases = {p.name[:-len(".b2nd")] for p in dataset_json.parent.glob("*/*.b2nd") if not p.name.endswith("_seg.b2nd")}
    return len(cases) or None
