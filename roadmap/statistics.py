"""The statistics of a ladder table (`report.ladder_table`: one row per rung, ours beside the
paper's): rank agreement with the paper (Spearman ρ of top-1 and of the training-loss sum, ordered
pairs, gain signs) and seed noise (spread over seeds, steps beyond it)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import rankdata


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


def ordered_pairs(table: pd.DataFrame, min_gap: float = 0.5, column: str = "top1_mean",
                  lower_is_better: bool = False) -> tuple[int, int]:
    """Of the pairs of adopted rungs (both with results) whose paper top-1 differs by at least
    `min_gap` points (the pairs a proxy can hope to resolve), how many our `column` orders the same
    way (a tie orders none): (agree, of)."""
    if column not in table:
        return 0, 0
    rows = table[table["adopted"] == "yes"].dropna(subset=[column, "paper_top1"])
    ours = (-1 if lower_is_better else 1) * rows[column].to_numpy(dtype=float)
    agree = _pair_agreement(ours[None, :], rows["paper_top1"].to_numpy(), min_gap)
    return int(agree[0][0]), int(agree[1])


def _pair_agreement(ours: np.ndarray, paper: np.ndarray, min_gap: float) -> tuple[np.ndarray, int]:
    """Per row of `ours` (draws x rungs), the pairs ordered as `paper` orders them, of the pairs it separates."""
    i, j = np.triu_indices(len(paper), 1)
    resolved = np.abs(paper[i] - paper[j]) >= min_gap
    i, j = i[resolved], j[resolved]
    return (np.sign(ours[:, i] - ours[:, j]) == np.sign(paper[i] - paper[j])).sum(axis=1), len(i)


def gain_agreement(table: pd.DataFrame, column: str = "top1_mean", lower_is_better: bool = False) -> tuple[int, int]:
    """How many steps (adopted or branch) move `column` (top-1: the table's `gain`) the way the paper
    moves top-1 (a step that leaves it unchanged agrees with none): (agree, of)."""
    if column not in table:
        return 0, 0
    by_step = table.set_index("step")[column]
    rows = table[table["adopted"].isin(["yes", "no"]) & table["parent"].isin(by_step.index)]
    gain = rows[column].to_numpy(dtype=float) - by_step.loc[rows["parent"]].to_numpy(dtype=float)
    gain = -gain if lower_is_better else gain
    known = ~np.isnan(gain) & rows["paper_gain"].notna().to_numpy()
    return int((np.sign(gain[known]) == np.sign(rows["paper_gain"].to_numpy()[known])).sum()), int(known.sum())


# The rankings a proxy is judged by (a ladder-table column; whether lower ranks higher; its per-run
# column in the results), and the predictors that train nothing: a proxy whose ranking does not beat
# theirs tells nothing that counting MACs does not.
RANKINGS = {"our top-1": ("top1_mean", False, "top1"), "our EMA top-1": ("top1_ema_mean", False, "top1_ema"),
            "our training-loss sum (lower ranks higher)": ("train_loss_sum_mean", True, "train_loss_sum"),
            "our held-out loss, last validation (lower ranks higher)": ("val_loss_mean", True, "val_loss")}
NULL_RANKINGS = {"MACs at the run's resolution (trains nothing)": ("gmacs", False, None),
                 "parameters (trains nothing)": ("params", False, None)}


def bootstrap_agreement(table: pd.DataFrame, runs: pd.DataFrame, column: str, lower_is_better: bool, run_column: str,
                        min_gap: float = 0.5, draws: int = 2000, seed: int = 0
                        ) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """95% bootstrap intervals of Spearman ρ and of the ordered pairs (`spearman`, `ordered_pairs`)
    of `column`: each adopted rung's seeds (`runs`' `run_column`, one row per completed run) are
    resampled with replacement, `draws` times. None when no rung has 2 seeds (no interval can be given)."""
    if column not in table or run_column not in runs:
        return None
    rows = table[table["adopted"] == "yes"].dropna(subset=[column, "paper_top1"])
    values = [runs.loc[runs["step"] == step, run_column].dropna().to_numpy(dtype=float) for step in rows["step"]]
    if len(rows) < 3 or max((len(v) for v in values), default=0) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.column_stack([rng.choice(v, size=(draws, len(v))).mean(axis=1) for v in values])
    means = -means if lower_is_better else means
    paper = rows["paper_top1"].to_numpy(dtype=float)
    ranks, paper_ranks = rankdata(means, axis=1), rankdata(paper)
    centred, paper_centred = ranks - ranks.mean(axis=1, keepdims=True), paper_ranks - paper_ranks.mean()
    with np.errstate(invalid="ignore", divide="ignore"):  # a draw with every rung tied has no ρ
        rho = centred @ paper_centred / (np.linalg.norm(centred, axis=1) * np.linalg.norm(paper_centred))
    pairs = _pair_agreement(means, paper, min_gap)[0]
    low, high = np.nanpercentile(rho, [2.5, 97.5])
    return (float(low), float(high)), tuple(float(p) for p in np.percentile(pairs, [2.5, 97.5]))



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
