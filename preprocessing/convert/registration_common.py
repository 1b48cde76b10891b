"""What the OASIS and IXI converters share: writing the registration layout
(`preprocessing.layouts.registration`) atomically."""
from __future__ import annotations

from pathlib import Path

from medgmae_plans.runtime.atomic import atomic_directory, write_json_atomic, write_text_atomic
from medgmae_plans.runtime import UserError

from ..layouts.registration import DESCRIPTION, FORMAT


def check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace it")


def write_dataset(target: Path, desc: dict, write_cases, log_lines: list[str], overwrite: bool) -> Path:
    """Build `target` in a temporary folder: `write_cases(tmp)` writes images/ and labels/, then the JSON."""
    with atomic_directory(target, replace=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        write_cases(tmp)
        write_json_atomic(tmp / DESCRIPTION, {"format": FORMAT, **desc})
        write_text_atomic(tmp / "conversion.log", "\n".join(log_lines) + "\n")
    return target
