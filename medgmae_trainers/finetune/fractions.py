"""`--fraction`: nested, seeded subsets of a fold's training cases.

The fold's training cases are sorted, shuffled once with a fixed seed, and a fraction f keeps the
first `max(1, round(f * n))` of that order (round half up). Every fraction therefore takes a prefix
of the same permutation, so the 1% cases are inside the 10% cases, inside 100%, and the same
command picks the same cases on every machine. Validation cases are never touched.
"""
from __future__ import annotations

import math
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
