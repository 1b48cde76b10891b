"""nnU-Net's three folders, with a documented default when a variable is unset.

nnU-Net reads `nnUNet_raw`, `nnUNet_preprocessed` and `nnUNet_results` once, when `nnunetv2.paths`
is first imported, so `ensure_nnunet_env()` must run before any nnunetv2 import.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")

_announced: set[str] = set()


def nnunet_folder(var: str) -> Path:
    """The folder named by environment variable `var`, or `./<var>` under the working directory.

    The default is set into the environment (so nnU-Net and child processes see the same folder)
    and said once per process on stderr.
    """
    if var not in NNUNET_VARS:
        raise KeyError(f"unknown nnU-Net folder variable {var!r}; expected one of {NNUNET_VARS}")
    value = os.environ.get(var)
    if value:
        return Path(value).expanduser().resolve()
    default = (Path.cwd() / var).resolve()
    os.environ[var] = str(default)
    if var not in _announced:
        _announced.add(var)
        print(f"[medgmae] {var} is not set; using {default}", file=sys.stderr)
    return default


def ensure_nnunet_env() -> dict[str, Path]:
    """Resolve all three nnU-Net folders (setting defaults); call before importing nnunetv2."""
    return {var: nnunet_folder(var) for var in NNUNET_VARS}


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name, e.g. (990, 'AbdomenPhantom') -> 'Dataset990_AbdomenPhantom'."""
    return f"Dataset{int(dataset_id):03d}_{name}"
