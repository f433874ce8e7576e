"""How numbers and rung titles read in the report's markdown tables and figure labels."""
from __future__ import annotations

import pandas as pd


def num(value: float, fmt: str = ".2f", signed: bool = False) -> str:
    """`value` in `fmt` (with its sign, if `signed`); "–" where it is missing."""
    if value is None or pd.isna(value):
        return "–"
    return format(value, ("+" if signed else "") + fmt)


def mean_std(mean: float, std: float, n: float | None = None) -> str:
    """"mean ± std (n)", without the parts that are missing; "–" without a mean."""
    if pd.isna(mean):
        return "–"
    text = num(mean) if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"
    return text if n is None or pd.isna(n) else f"{text} ({int(n)})"


def short_title(title: str) -> str:
    """A paper row's title without its parenthesis, e.g. "Swin-T"."""
    return title.split(" (")[0]
