"""Dataset names on the command line: an id (`218`), a full name, or an alias such as `AMOS`.

nnU-Net itself only takes an int or a full `DatasetXXX_Name`; every MedGMAE command that takes
`-d` goes through `resolve_dataset` so the same short names work everywhere.

Resolution is against the datasets that exist: the `DatasetXXX_Name` folders in `nnUNet_raw` and
`nnUNet_preprocessed` (a cluster may hold only the preprocessed copy). Matching is
case-insensitive:

1. digits: the dataset with that id;
2. the full folder name, or the name after `DatasetXXX_` (`AbdomenPhantom`);
3. an alias: every dataset whose name contains the alias's pattern (`AMOS` matches
   `Dataset218_AMOS2022_postChallenge_task1`).

No match, or several, is a `UserError` that lists the datasets that exist.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

from .runtime.paths import nnunet_folder
from .runtime import UserError

# alias (lower case) -> regular expression searched in the lower-cased name after `DatasetXXX_`.
# The converters (`medgmae_convert`) write names these patterns match.
ALIASES: dict[str, str] = {
    "amos": r"amos",
    "flare22": r"flare_?22",
    "btcv": r"btcv",
    "segthor": r"segthor",
    "abdomenatlas": r"abdomenatlas",
    # The segmentation phantom only; the classification phantom (Dataset991_PhantomFindings) has its own.
    "phantom": r"^abdomenphantom$",
    "phantomfindings": r"^phantomfindings$",
    "ctrate": r"^ctrate$",
}

_DATASET_FOLDER = re.compile(r"^Dataset(\d{3,})_(.+)$")


def available_datasets(roots: Iterable[Path] | None = None) -> list[str]:
    """Sorted, de-duplicated `DatasetXXX_Name` folders under `roots` (default: raw and preprocessed)."""
    if roots is None:
        roots = [nnunet_folder("nnUNet_raw"), nnunet_folder("nnUNet_preprocessed")]
    names: set[str] = set()
    for root in roots:
        root = Path(root)
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir() and _DATASET_FOLDER.match(p.name))
    return sorted(names, key=lambda n: (int(_DATASET_FOLDER.match(n).group(1)), n))


def dataset_id(name: str) -> int:
    """The id of a full dataset name: `Dataset218_AMOS...` -> 218."""
    match = _DATASET_FOLDER.match(name)
    if not match:
        raise UserError(f"{name!r} is not a dataset folder name of the form DatasetXXX_Name")
    return int(match.group(1))


def _matches(text: str, names: Sequence[str]) -> list[str]:
    key = text.strip().lower()
    if key.isdigit():
        return [n for n in names if dataset_id(n) == int(key)]
    exact = [n for n in names if n.lower() == key or _DATASET_FOLDER.match(n).group(2).lower() == key]
    if exact:
        return exact
    pattern = ALIASES.get(key)
    if pattern is None:
        return []
    return [n for n in names if re.search(pattern, _DATASET_FOLDER.match(n).group(2).lower())]


def resolve_dataset(text: str, roots: Iterable[Path] | None = None) -> str:
    """The full `DatasetXXX_Name` that `text` (id, name or alias) names; `UserError` unless exactly one."""
    names = available_datasets(roots)
    found = _matches(str(text), names)
    existing = ", ".join(names) if names else "none"
    if not found:
        hint = f" (aliases: {', '.join(sorted(ALIASES))})"
        raise UserError(f"no dataset matches {text!r}{hint}; datasets that exist: {existing}")
    if len(found) > 1:
        raise UserError(
            f"{text!r} is ambiguous: it matches {', '.join(found)}; give the id or the full name "
            f"(datasets that exist: {existing})"
        )
    return found[0]
