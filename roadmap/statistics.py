"""The statistics of a ladder table (`report.ladder_table`: one row per rung, ours beside the
paper's): rank agreement with the paper (Spearman ρ of top-1 and of the training-loss sum, ordered
pairs, gain signs) and seed noise (spread over seeds, steps beyond it)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def spearman(table: pd.DataFrame, column: str = "top1_mean", lower_is_better: bool = False) -> tuple[float, int]:
    """Spearman rank correlation of our per-rung `column` (top-1 mean; or `train_loss_sum_mean`
    with lower_is_better, ranked by minus it) and the paper's top-1, over adopted rungs that have
    both (ties get average ranks); NaN below 3 rungs. Returns (rho, number of rungs)."""
    if column not in table:
        return math.nan, 0
    rows = table[table["adopted"] == "yes"].dropna(subset=[column, "paper_top1"])
    if len(rows) < 3:
        return math.nan, len(rows)
    ours = -rows[column] if lower_is_better else rows[column]
    return float(ours.rank().corr(rows["paper_top1"].rank())), len(rows)


def ordered_pairs(table: pd.DataFrame, min_gap: float = 0.5) -> tuple[int, int]:
    """Of the pairs of adopted rungs (both with results) whose paper top-1 differs by at least
    `min_gap` points (the pairs a proxy can hope to resolve), how many our means order the same
    way: (agree, of)."""
    rows = table[table["adopted"] == "yes"].dropna(subset=["top1_mean", "paper_top1"])
    ours, paper = rows["top1_mean"].to_numpy(), rows["paper_top1"].to_numpy()
    agree = total = 0
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if abs(paper[i] - paper[j]) >= min_gap:
                total += 1
                agree += bool(np.sign(ours[i] - ours[j]) == np.sign(paper[i] - paper[j]))
    return agree, total


def gain_agreement(table: pd.DataFrame) -> tuple[int, int]:
    """How many steps (adopted or branch) move top-1 the same way as in the paper: (agree, of)."""
    rows = table[table["adopted"].isin(["yes", "no"])].dropna(subset=["gain", "paper_gain"])
    return int((np.sign(rows["gain"]) == np.sign(rows["paper_gain"])).sum()), len(rows)



def seed_spread(table: pd.DataFrame) -> tuple[float, float, float, int]:
    """Std of top-1 over seeds on adopted rungs with n >= 2: (median, max, pooled, number of rungs).
    The pooled std, sqrt(sum (n-1) s² / sum (n-1)), assumes every rung is as noisy as the others:
    with 2 or 3 seeds a single rung's std is itself too uncertain to judge a step by."""
    rows = table[(table["adopted"] == "yes") & (table["n"] >= 2)].dropna(subset=["top1_std"])
    if rows.empty:
        return math.nan, math.nan, math.nan, 0
    pooled = math.sqrt(((rows["n"] - 1) * rows["top1_std"] ** 2).sum() / (rows["n"] - 1).sum())
    return float(rows["top1_std"].median()), float(rows["top1_std"].max()), pooled, len(rows)


def difference_se(pooled: float, n: float | np.ndarray, n_other: float | np.ndarray) -> float | np.ndarray:
    """Standard error of the difference of two rung means over n and n_other seeds, each seed with
    the pooled seed std (`seed_spread`); NaN where either count is."""
    return pooled * np.sqrt(1 / n + 1 / n_other)


def beyond_noise(table: pd.DataFrame, z: float = 2.0) -> pd.DataFrame:
    """Steps (adopted or branch) whose change over the parent rung exceeds z standard errors of a
    difference of two means with the pooled seed std, s_pooled * sqrt(1/n + 1/n_parent); both
    rungs need a result. Adds `gain_se`; empty while no rung has 2 seeds."""
    pooled = seed_spread(table)[2]
    by_step = table.set_index("step")
    rows = table[table["adopted"].isin(["yes", "no"]) & table["parent"].isin(by_step.index)].dropna(subset=["gain"])
    parent_n = by_step.loc[rows["parent"], "n"].to_numpy(dtype=float)
    rows = rows.assign(gain_se=difference_se(pooled, rows["n"].to_numpy(dtype=float), parent_n))
    return rows[rows["gain_se"].notna() & (rows["gain"].abs() > z * rows["gain_se"])]
