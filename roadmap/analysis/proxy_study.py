"""The proxy study's comparisons: a factor study against its control experiment (`study_table`),
and experiments' ladders side by side (`comparison_table`, `comparison_figure`)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from roadmap.analysis.formatting import mean_std, num
from roadmap.analysis.load import ReportData
from roadmap.analysis.tables import DEFAULT_REGIME
from roadmap.ladder import list_steps
from roadmap.reference import paper_table
from roadmap.statistics import (
    bootstrap_agreement, difference_se, gain_agreement, ordered_pairs, seed_spread, spearman,
)


def study_table(summary: pd.DataFrame, control: pd.DataFrame, regime: str = DEFAULT_REGIME) -> str:
    """A factor study: one row per variant (a factor changed from the control experiment), one
    column per rung, top-1 mean (n) and its change from the control's plain rung; the control's
    own row first. Empty string when the summary has no variants."""
    ours = summary[summary["regime"] == regime].assign(variant=lambda t: t["variant"].fillna(""))
    ours = ours[ours["variant"] != ""]
    if ours.empty:
        return ""
    base = control[(control["regime"] == regime) & (control["variant"].fillna("") == "")].set_index("step")
    steps = [s for s in list_steps(regime, adopted_only=False) if s in set(ours["step"])]
    paper = paper_table(regime).set_index("step")["paper_top1"]
    lines = ["| factor | " + " | ".join(f"`{s}`" for s in steps) + " |", "|---|" + "---|" * len(steps),
             "| paper | " + " | ".join(num(paper.get(s, np.nan)) for s in steps) + " |",
             "| control | " + " | ".join(
                 mean_std(base.at[s, "top1_mean"], base.at[s, "top1_std"], base.at[s, "n"]) if s in base.index
                 else "–" for s in steps) + " |"]
    for variant, rows in ours.groupby("variant", sort=False):
        by_step = rows.set_index("step")
        cells = []
        for s in steps:
            if s not in by_step.index:
                cells.append("–")
                continue
            mean = by_step.at[s, "top1_mean"]
            delta = mean - base.at[s, "top1_mean"] if s in base.index else np.nan
            cells.append(f"{mean_std(mean, by_step.at[s, 'top1_std'], by_step.at[s, 'n'])} [{num(delta, signed=True)}]")
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    lines += ["", "Top-1 mean (± std over seeds) (n) [change from the control's rung]."]
    return "\n".join(lines)


def compared_ladders(data: ReportData, regime: str) -> dict[str, pd.DataFrame]:
    """This experiment's ladder table and those of the experiments compared with it, by name."""
    return {d.name: d.ladder(regime) for d in (data, *data.compared)}


def comparison_table(ladders: dict[str, pd.DataFrame], runs: dict[str, pd.DataFrame] | None = None) -> str:
    """One row per experiment (name -> its ladder table, `ladder_table`): how many adopted rungs ran
    and with how many seeds, the first and last adopted rung's top-1 and their gap (with 2 standard
    errors of it from the pooled seed std), the agreement with the paper (ρ, ordered pairs, signs;
    95% bootstrap intervals over seeds where `runs`, name -> completed plain runs, has 2 seeds of a
    rung), and the same for ranking the rungs by MACs, which trains nothing."""
    lines = ["| experiment | rungs (seeds) | first rung | endpoint | endpoint − first (± 2 SE) "
             "| Spearman ρ | ρ of the loss sum | pairs as the paper | signs as the paper | pooled seed std "
             "| ρ by MACs (trains nothing) | pairs by MACs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, table in ladders.items():
        adopted = table[table["adopted"] == "yes"]
        ran = adopted.dropna(subset=["top1_mean"])
        first, last = adopted.iloc[0], adopted.iloc[-1]
        pooled = seed_spread(table)[2]
        gap = last["top1_mean"] - first["top1_mean"]
        se2 = 2 * difference_se(pooled, last["n"], first["n"])  # NaN where a rung has not run or no rung has 2 seeds
        seeds = "–" if ran.empty else f"{int(ran['n'].min())}" + ("" if ran["n"].min() == ran["n"].max() else f"–{int(ran['n'].max())}")
        rho, loss_rho = spearman(table)[0], spearman(table, "train_loss_sum_mean", lower_is_better=True)[0]
        pairs, signs = ordered_pairs(table), gain_agreement(table)
        rho_cells = [num(rho, ".3f"), num(loss_rho, ".3f")]
        pairs_cell = f"{pairs[0]} of {pairs[1]}"
        seeds_of = (runs or {}).get(name)
        for k, (column, lower, run_column) in enumerate([("top1_mean", False, "top1"), ("train_loss_sum_mean", True, "train_loss_sum")]):
            interval = None if seeds_of is None else bootstrap_agreement(table, seeds_of, column, lower, run_column)
            if interval is not None:
                rho_cells[k] += f" [{interval[0][0]:.2f}, {interval[0][1]:.2f}]"
                pairs_cell += f" [{interval[1][0]:.0f}, {interval[1][1]:.0f}]" if k == 0 else ""
        macs_pairs = ordered_pairs(table, column="gmacs")
        lines.append(
            f"| {name} | {len(ran)}/{len(adopted)} ({seeds}) | {mean_std(first['top1_mean'], first['top1_std'])} "
            f"| {mean_std(last['top1_mean'], last['top1_std'])} "
            f"| {num(gap, signed=True)}{'' if math.isnan(se2) else f' ± {se2:.2f}'} "
            f"| {rho_cells[0]} | {rho_cells[1]} | {pairs_cell} | {signs[0]} of {signs[1]} "
            f"| {num(pooled)} | {num(spearman(table, 'gmacs')[0], '.3f')} | {macs_pairs[0]} of {macs_pairs[1]} |"
        )
    return "\n".join(lines)


def comparison_figure(ladders: dict[str, pd.DataFrame], title: str = "") -> Figure:
    """Experiments' ladders on one scale (name -> ladder table, `ladder_table`): left, each adopted
    rung's top-1 change from the experiment's first rung, beside the paper's (is the trajectory
    the paper's?); right, top-1 itself, mean ± std over seeds."""
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    ax_gain, ax_top1 = fig.subplots(1, 2, sharex=True)
    steps: list[str] = []
    for name, table in ladders.items():
        adopted = table[table["adopted"] == "yes"].reset_index(drop=True)
        steps = steps or adopted["step"].tolist()
        x, mean, std = np.arange(len(adopted)), adopted["top1_mean"], adopted["top1_std"].fillna(0)
        label = f"{name} (ρ {num(spearman(table)[0], '.2f')})"
        line = ax_gain.plot(x, mean - mean.iloc[0], marker="o", markersize=4, label=label)[0]
        ax_top1.errorbar(x, mean, yerr=std, marker="o", markersize=4, capsize=2, color=line.get_color(), label=name)
    if ladders:
        paper = next(iter(ladders.values()))
        paper = paper[paper["adopted"] == "yes"]["paper_top1"].reset_index(drop=True)
        ax_gain.plot(np.arange(len(paper)), paper - paper.iloc[0], color="black", linestyle="--", marker="s",
                     markersize=4, label="paper (ImageNet-1K)")
    ax_gain.axhline(0, color="grey", linewidth=0.8)
    ax_gain.set_ylabel("top-1 change from the first rung (points)")
    ax_top1.set_ylabel("our top-1 (%), mean ± std over seeds")
    for ax in (ax_gain, ax_top1):
        ax.set_xticks(np.arange(len(steps)), steps, rotation=60, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "ladders compared")
    return fig
