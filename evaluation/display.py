"""How results name runs: the paper's names of the inits and datasets, fractions in percent, and the
header of a (dataset, fraction) column. The tables (`compare`) and the charts (`plots`) both use them.
"""
from __future__ import annotations

import re

from medgmae_plans.constants import INIT_DISPLAY

# the paper's names for the datasets our aliases resolve (medgmae_plans.datasets.ALIASES)
_DATASET_DISPLAY = ((r"amos", "AMOS"), (r"flare_?22", "FLARE'22"), (r"btcv", "BTCV"), (r"segthor", "SegTHOR"),
                    (r"abdomenatlas", "AbdomenAtlas"), (r"phantom", "Phantom"))


def dataset_display(name: str) -> str:
    short = re.sub(r"^Dataset\d+_", "", name)
    for pattern, display in _DATASET_DISPLAY:
        if re.search(pattern, short.lower()):
            return display
    return short


def fraction_display(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def init_display(init: str) -> str:
    return INIT_DISPLAY.get(init, init)


def column_header(column: tuple[str, float]) -> str:
    """'AMOS 10%' for the column (dataset, fraction)."""
    return f"{dataset_display(column[0])} {fraction_display(column[1])}"
