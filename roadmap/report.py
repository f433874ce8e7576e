"""`python -m roadmap.report experiment=<preset> output_root=…`: figures and a table for one experiment.

Reads <output_root>/<experiment>/results.csv (collecting the run directories first when it is
absent or older than a result.json) and every run's metrics.csv, and writes to `report_dir`
(default <output_root>/<experiment>/report/): `ladder.md` and the figures `ladder`,
`top1_vs_gmacs`, `top1_vs_throughput`, `curves` and `dynamics` (and `compare`, with `compare=[…]`)
in each of `formats` (png, svg). Regimes other than r50 get their own files, suffixed `_<regime>`.
Rungs that have not run yet appear with the paper's numbers alone. The notebooks in analysis/ call these same functions.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig

from roadmap.collect import PAPER_COLUMNS, collect, ladder_order, load_results, paper_table, summarize
from roadmap.ladder import LadderError, conf_dir, list_steps, load_regime, step_chain
from roadmap.results import RESULT_FIELDS
from roadmap import rundir
from roadmap.rundir import REPORT_DIR, RESULT_FILE, RESULTS_CSV, experiments_with, list_runs, read_history
from roadmap.statistics import beyond_noise, difference_se, gain_agreement, ordered_pairs, seed_spread, spearman

FIGURES = ("ladder", "top1_vs_gmacs", "top1_vs_throughput", "curves", "dynamics")
DEFAULT_REGIME = "r50"
OURS_COLOR = "tab:blue"
PAPER_COLOR = "tab:orange"
BRANCH_COLOR = "lightgrey"
CURVE_COLUMNS = ["regime", "rung", "step", "variant", "seed", "order", "epoch", "val/top1", "val/top1_ema"]
DYN = "dyn/"  # roadmap.diagnostics' columns, kept in `curves` where a metrics.csv has them


@dataclass
class ReportData:
    """Everything a report draws: runs, per-rung summary, per-epoch curves."""

    experiment_dir: Path
    results: pd.DataFrame  # one row per run (results.csv)
    summary: pd.DataFrame  # one row per rung and variant (collect.summarize)
    curves: pd.DataFrame  # one row per run and epoch (metrics.csv), CURVE_COLUMNS and any dyn/ columns
    control: ReportData | None = None  # a factor study's control experiment (its plain rungs)
    compared: list[ReportData] = field(default_factory=list)  # other experiments drawn beside this one
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # `ladder`'s, built once per regime

    def ladder(self, regime: str = DEFAULT_REGIME) -> pd.DataFrame:
        """The regime's ladder table (`ladder_table`), built on first use."""
        if regime not in self.tables:
            self.tables[regime] = ladder_table(self.summary, regime)
        return self.tables[regime]

    @property
    def name(self) -> str:
        return self.experiment_dir.name

    @property
    def regimes(self) -> list[str]:
        """Regimes with runs (completed or not), else the default regime alone."""
        found = set(self.results.get("regime", pd.Series(dtype=str)).dropna()) | set(self.curves["regime"])
        return sorted(found, key=lambda r: (r != DEFAULT_REGIME, r)) or [DEFAULT_REGIME]

    @property
    def image_size(self) -> int | None:
        sizes = self.results.get("image_size", pd.Series(dtype=float)).dropna().unique()
        return int(sizes[0]) if len(sizes) == 1 else None


# ---------------------------------------------------------------------------------------- data


def load_curves(experiment_dir: Path) -> pd.DataFrame:
    """Every run's metrics.csv (`results.list_runs`), finished or still running, stacked; the
    optimizer step of metrics.csv is `optimizer_step`, `step` is the rung's."""
    frames = []
    for run in list_runs(experiment_dir):
        frame = pd.DataFrame(read_history(run.path))
        if frame.empty or "epoch" not in frame:
            continue
        frame = frame.rename(columns={"step": "optimizer_step"}).assign(
            regime=run.regime, rung=run.rung, step=run.step, variant=run.variant or "", seed=run.seed,
            order=ladder_order(run.regime, run.step),
        )
        frames.append(frame.reindex(columns=CURVE_COLUMNS + [c for c in frame if c.startswith(DYN)]))
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True).sort_values(["regime", "order", "variant", "seed", "epoch"])


def load_report_data(experiment_dir: str | Path, write_collect: bool = False) -> ReportData:
    """Results, summary and curves of one experiment folder; empty tables when nothing has run.

    results.csv is used as is unless a result.json is newer, it lacks a result field (written by an
    older version) or it is absent: then the run directories are collected again, in memory, or
    with `write_collect` through `roadmap.collect.collect`, which rewrites results.csv and summary.csv."""
    experiment_dir = Path(experiment_dir)
    table = experiment_dir / RESULTS_CSV
    records = [run.path / RESULT_FILE for run in list_runs(experiment_dir) if (run.path / RESULT_FILE).is_file()]
    stale = bool(records) and (
        not table.is_file() or max(p.stat().st_mtime for p in records) > table.stat().st_mtime
    )
    results = pd.read_csv(table) if table.is_file() and not stale else None
    if records and (results is None or not set(RESULT_FIELDS) <= set(results.columns)):  # or an older schema
        results = collect(experiment_dir)[0] if write_collect else load_results(experiment_dir)
    elif results is None:
        results = pd.DataFrame(columns=[*RESULT_FIELDS, *PAPER_COLUMNS, "order"])
    return ReportData(experiment_dir, results, summarize(results), load_curves(experiment_dir))


def parent_step(regime: str, step: str) -> str | None:
    """The rung `step` is one delta away from (a branch's parent is the rung it branches off)."""
    try:
        spec = load_regime(regime)
        chain = step_chain(step, regime)
    except LadderError:
        return None
    if step == spec.baseline:
        return None
    return chain[-2] if len(chain) >= 2 else spec.baseline


def ladder_table(summary: pd.DataFrame, regime: str = DEFAULT_REGIME) -> pd.DataFrame:
    """One row per paper rung (and per extra step we ran), in ladder order, our numbers beside the
    paper's, `number` (the README's; -1 off the adopted path), `parent`, and `gain` / `paper_gain`
    over the parent rung. A rung that ran has the paper columns of collect's table (`summary`); one
    that has not, ours NaN and the paper's from `collect.paper_table`. Reference rows (Swin,
    adopted = "ref") come last."""
    paper = paper_table(regime).drop(columns="regime")
    ours = summary[(summary["regime"] == regime) & (summary["variant"].fillna("") == "")]
    ours = ours.drop(columns=["regime", "variant", "order"]).merge(paper.drop(columns=PAPER_COLUMNS), on="step", how="left")
    not_run = paper[(paper["order"] >= 0) & ~paper["step"].isin(ours["step"])]  # the recipe step (< 0): once run
    frames = [df for df in (ours, not_run.reindex(columns=ours.columns)) if not df.empty]
    table = pd.concat(frames, ignore_index=True) if frames else ours
    # A step we ran that the paper's table lacks gets its ladder position and adoption here.
    adopted_steps = list_steps(regime) if _known_regime(regime) else []
    table["order"] = [o if pd.notna(o) else ladder_order(regime, s) for o, s in zip(table["order"], table["step"])]
    table["adopted"] = [
        a if isinstance(a, str) else ("yes" if s in adopted_steps or not adopted_steps else "no")
        for a, s in zip(table["adopted"], table["step"])
    ]
    table = table.sort_values("order", kind="stable").reset_index(drop=True)
    table["number"] = (table["adopted"] == "yes").cumsum() - 1  # README's numbering: adopted rungs only
    table.loc[table["adopted"] != "yes", "number"] = -1
    table["parent"] = [parent_step(regime, s) for s in table["step"]]
    by_step = table.set_index("step")
    for ours_col, gain_col in (("top1_mean", "gain"), ("paper_top1", "paper_gain")):
        table[gain_col] = [
            row[ours_col] - by_step.at[row["parent"], ours_col] if row["parent"] in by_step.index else np.nan
            for _, row in table.iterrows()
        ]
    return table


def _known_regime(regime: str) -> bool:
    try:
        load_regime(regime)
        return True
    except LadderError:
        return False


def missing_rungs(summary: pd.DataFrame, regime: str = DEFAULT_REGIME, adopted_only: bool = True) -> list[str]:
    """Rungs of the regime with no completed run yet, in ladder order."""
    done = set(summary.loc[(summary["regime"] == regime) & (summary["variant"].fillna("") == ""), "step"])
    return [s for s in list_steps(regime, adopted_only=adopted_only) if s not in done]


def status_note(data: ReportData, regime: str = DEFAULT_REGIME) -> str:
    """One line on how complete the experiment is, e.g. for a notebook."""
    missing, total = missing_rungs(data.summary, regime), len(list_steps(regime))
    if not missing:
        return f"{data.name} ({regime}): all {total} adopted rungs have results."
    if len(missing) == total:
        return f"{data.name} ({regime}): no completed runs under {data.experiment_dir} yet: the paper's numbers alone."
    return f"{data.name} ({regime}): {total - len(missing)} of {total} adopted rungs have results; missing: {', '.join(missing)}."


# -------------------------------------------------------------------------------------- markdown


def _num(value: float, fmt: str = ".2f", signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    return format(value, ("+" if signed else "") + fmt)


def _mean_std(mean: float, std: float, n: float | None = None) -> str:
    if pd.isna(mean):
        return "–"
    text = _num(mean) if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"
    return text if n is None or pd.isna(n) else f"{text} ({int(n)})"


def markdown_table(table: pd.DataFrame, image_size: int | None = None) -> str:
    """A ladder table (`ladder_table`) in markdown (ours beside the paper's, gains over the parent
    rung), then the Spearman rank correlation and the gain-sign agreement."""
    res = f"{image_size}²" if image_size else "run res."
    lines = [
        f"| # | step | ours top-1 (n) | ours EMA top-1 | params (M) | GMACs @{res} | train img/s "
        "| paper top-1 | paper GFLOPs | Δ ours | Δ paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        name = {"no": f"`{row['step']}` (not adopted)", "ref": f"{_short_title(row['title'])} (reference)"}.get(
            row["adopted"], f"`{row['step']}`")
        lines.append(
            f"| {'–' if row['number'] < 0 else row['number']} | {name} "
            f"| {_mean_std(row['top1_mean'], row['top1_std'], row['n'])} "
            f"| {_mean_std(row['top1_ema_mean'], row['top1_ema_std'])} "
            f"| {_num(row['params'] / 1e6, '.3f')} | {_num(row['gmacs'], '.4f')} | {_num(row['train_img_per_s'], '.0f')} "
            f"| {_mean_std(row['paper_top1'], row['paper_top1_std'])} | {_num(row['paper_gflops'])} "
            f"| {_num(row['gain'], signed=True)} | {_num(row['paper_gain'], signed=True)} |"
        )
    rho, k = spearman(table)
    loss_rho, loss_k = spearman(table, "train_loss_sum_mean", lower_is_better=True)
    agree, steps = gain_agreement(table)
    pairs_agree, pairs = ordered_pairs(table)
    lines += [
        "",
        f"Spearman rank correlation of our mean top-1 with the paper's over {k} adopted rungs: "
        + (f"ρ = {rho:.3f}." if not math.isnan(rho) else "n/a (needs 3 rungs with results).")
        + f" Of our training-loss sum (lower ranks higher; {loss_k} rungs): "
        + (f"ρ = {loss_rho:.3f}." if not math.isnan(loss_rho) else "n/a."),
        f"Rung pairs whose paper top-1 differs by ≥ 0.5 points ordered as in the paper: {pairs_agree} of {pairs}.",
        f"Steps whose top-1 change has the paper's sign: {agree} of {steps}.",
        *_noise_lines(table),
        "Δ: change over the parent rung (a not-adopted branch's parent is the rung it branches off).",
    ]
    return "\n".join(lines)



def _noise_lines(table: pd.DataFrame) -> list[str]:
    median, largest, pooled, k = seed_spread(table)
    if k == 0:
        return ["Seed spread: n/a (needs 2 seeds of a rung)."]
    clear = beyond_noise(table)
    agree = int((np.sign(clear["gain"]) == np.sign(clear["paper_gain"])).sum())
    named = ", ".join(f"`{s}` {g:+.2f}" for s, g in zip(clear["step"], clear["gain"])) or "none"
    return [
        f"Seed spread (std of top-1 over seeds, {k} rungs with n ≥ 2): median {median:.2f}, max {largest:.2f}, "
        f"pooled {pooled:.2f} points.",
        f"Steps whose change exceeds 2 standard errors of the seed noise (pooled std): {len(clear)} ({named}); "
        f"{agree} of them with the paper's sign.",
    ]

def variants_table(summary: pd.DataFrame, regime: str = DEFAULT_REGIME) -> str:
    """Named variants (e.g. leave-one-out) against their plain rung; empty string when none."""
    ours = summary[summary["regime"] == regime].assign(variant=lambda t: t["variant"].fillna(""))
    variants = ours[ours["variant"] != ""]
    if variants.empty:
        return ""
    plain = ours[ours["variant"] == ""].set_index("step")["top1_mean"]
    lines = ["| rung | variant | top-1 (n) | Δ vs rung | params (M) | GMACs |", "|---|---|---|---|---|---|"]
    for _, row in variants.iterrows():
        base = plain.get(row["step"], np.nan)
        lines.append(
            f"| `{row['step']}` | `{row['variant']}` | {_mean_std(row['top1_mean'], row['top1_std'], row['n'])} "
            f"| {_num(row['top1_mean'] - base, signed=True)} | {_num(row['params'] / 1e6, '.3f')} | {_num(row['gmacs'], '.4f')} |"
        )
    return "\n".join(lines)


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
             "| paper | " + " | ".join(_num(paper.get(s, np.nan)) for s in steps) + " |",
             "| control | " + " | ".join(
                 _mean_std(base.at[s, "top1_mean"], base.at[s, "top1_std"], base.at[s, "n"]) if s in base.index
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
            cells.append(f"{_mean_std(mean, by_step.at[s, 'top1_std'], by_step.at[s, 'n'])} [{_num(delta, signed=True)}]")
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    lines += ["", "Top-1 mean (± std over seeds) (n) [change from the control's rung]."]
    return "\n".join(lines)


def comparison_table(ladders: dict[str, pd.DataFrame]) -> str:
    """One row per experiment (name -> its ladder table, `ladder_table`): how many adopted rungs ran
    and with how many seeds, the first and last adopted rung's top-1 and their gap (with 2 standard
    errors of it from the pooled seed std), and the agreement with the paper (ρ, ordered pairs, signs)."""
    lines = ["| experiment | rungs (seeds) | first rung | endpoint | endpoint − first (± 2 SE) "
             "| Spearman ρ | ρ of the loss sum | pairs as the paper | signs as the paper | pooled seed std |",
             "|---|---|---|---|---|---|---|---|---|---|"]
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
        lines.append(
            f"| {name} | {len(ran)}/{len(adopted)} ({seeds}) | {_mean_std(first['top1_mean'], first['top1_std'])} "
            f"| {_mean_std(last['top1_mean'], last['top1_std'])} "
            f"| {_num(gap, signed=True)}{'' if math.isnan(se2) else f' ± {se2:.2f}'} "
            f"| {_num(rho, '.3f')} | {_num(loss_rho, '.3f')} | {pairs[0]} of {pairs[1]} | {signs[0]} of {signs[1]} "
            f"| {_num(pooled)} |"
        )
    return "\n".join(lines)


def markdown_report(data: ReportData, figure_format: str | None = "png") -> str:
    """The whole ladder.md: run counts, then per regime the figures, the ladder table and variants."""
    status = data.results["status"].value_counts() if not data.results.empty else pd.Series(dtype=int)
    failed = data.results[data.results["status"] == "failed"] if not data.results.empty else data.results
    parts = [
        f"# Ladder report: {data.name}",
        "",
        "Runs: " + (", ".join(f"{n} {s}" for s, n in status.items()) if len(status) else "none finished yet") + ".",
    ]
    # The reason's first line: a traceback stays in the run's result.json.
    parts += [f"- failed: `{r.regime}/{r.step}` seed {r.seed}: {str(r.reason).splitlines()[0] if r.reason else ''}"
              for r in failed.itertuples()]
    parts.append("Top-1 in %: ours on this experiment's data (mean ± std over seeds), the paper's on ImageNet-1K at 224².")
    for regime in data.regimes:
        suffix = _suffix(regime)
        parts += ["", f"## {regime}", "", status_note(data, regime), ""]
        if figure_format:
            parts += [f"![{name}]({name}{suffix}.{figure_format})" for name in FIGURES] + [""]
        parts.append(markdown_table(data.ladder(regime), data.image_size))
        variants = variants_table(data.summary, regime)
        if variants:
            parts += ["", "### Variants", "", variants]
        if data.control is not None:
            study = study_table(data.summary, data.control.summary, regime)
            parts += ["", f"### Factor study (control: {data.control.name})", "", study or "no variants yet."]
        if data.compared:
            parts += ["", "### Compared experiments", ""]
            if figure_format:
                parts += [f"![compare](compare{suffix}.{figure_format})", ""]
            parts.append(comparison_table(_ladders(data, regime)))
    return "\n".join(parts) + "\n"


def _ladders(data: ReportData, regime: str) -> dict[str, pd.DataFrame]:
    """This experiment's ladder table and those of the experiments compared with it, by name."""
    return {d.name: d.ladder(regime) for d in (data, *data.compared)}


# --------------------------------------------------------------------------------------- figures


def _bar_labels(table: pd.DataFrame) -> list[str]:
    return [f"{s} (not adopted)" if a == "no" else s for s, a in zip(table["step"], table["adopted"])]


def _bars(ax, y, values, errors, adopted, lo: float, color: str) -> None:
    """Horizontal bars from `lo` (axis start) to each value; branches greyed and hatched."""
    for yi, value, error, is_adopted in zip(y, values, errors, adopted):
        if pd.isna(value):
            continue
        ax.barh(
            yi, value - lo, left=lo, height=0.7, color=color if is_adopted else BRANCH_COLOR,
            hatch=None if is_adopted else "//", edgecolor="dimgrey" if not is_adopted else color,
            xerr=None if pd.isna(error) else error, error_kw={"elinewidth": 1, "capsize": 2},
        )


def _axis_range(values: pd.Series, errors: pd.Series, pad: float, room: float) -> tuple[float, float]:
    low = (values - errors.fillna(0)).min()
    high = (values + errors.fillna(0)).max()
    return math.floor(low - pad), high + room * max(high - low, 1.0) + pad


def ladder_figure(full: pd.DataFrame, title: str = "", column: str = "top1") -> Figure:
    """The paper's Figure 2 with our results: one horizontal bar per rung (baseline at top), ours
    (mean ± std, GMACs at the run's resolution) on the left, the paper's (± std, GFLOPs) on the
    right with the Swin reference line; not-adopted branches hatched grey; missing runs marked.
    `full`: a ladder table (`ladder_table`)."""
    refs = full[full["adopted"] == "ref"]
    table = full[full["adopted"] != "ref"].reset_index(drop=True)
    y = np.arange(len(table))
    adopted = (table["adopted"] == "yes").tolist()
    fig = Figure(figsize=(12, 1.6 + 0.38 * len(table)), layout="constrained")
    ax_ours, ax_paper = fig.subplots(1, 2, sharey=True)

    mean, std = table[f"{column}_mean"], table[f"{column}_std"]
    if mean.notna().any():
        lo, hi = _axis_range(mean, std, pad=1.0, room=0.25)
        _bars(ax_ours, y, mean, std, adopted, lo, OURS_COLOR)
        for yi, m, s, g in zip(y, mean, std.fillna(0), table["gmacs"]):
            if pd.notna(m) and pd.notna(g):
                ax_ours.text(m + s + 0.01 * (hi - lo), yi, f"{g:.3g} GMACs", va="center", fontsize=7)
        ax_ours.set_xlim(lo, hi)
    else:
        ax_ours.set_xlim(0, 100)
    for yi, m in zip(y, mean):
        if pd.isna(m):
            ax_ours.text(0.02, yi, "not run yet", va="center", fontsize=7, color="grey", style="italic",
                         transform=ax_ours.get_yaxis_transform())
    ax_ours.set_xlabel(f"ours: {'EMA ' if column == 'top1_ema' else ''}top-1 (%), mean ± std over seeds")

    paper, paper_std = table["paper_top1"], table["paper_top1_std"]
    if paper.notna().any():
        values = pd.concat([paper, refs["paper_top1"]])
        lo, hi = _axis_range(values, pd.concat([paper_std, refs["paper_top1_std"]]), pad=0.3, room=0.2)
        _bars(ax_paper, y, paper, paper_std, adopted, lo, PAPER_COLOR)
        for yi, m, s, g in zip(y, paper, paper_std.fillna(0), table["paper_gflops"]):
            if pd.notna(m) and pd.notna(g):
                ax_paper.text(m + s + 0.01 * (hi - lo), yi, f"{g:.2f} GFLOPs", va="center", fontsize=7)
        for _, ref in refs.iterrows():
            ax_paper.axvline(ref["paper_top1"], color="grey", linestyle="--", linewidth=1)
            ax_paper.text(ref["paper_top1"], -0.6, f" {_short_title(ref['title'])}: {ref['paper_top1']:.1f}",
                          fontsize=7, color="dimgrey", va="bottom")
        ax_paper.set_xlim(lo, hi)
    ax_paper.set_xlabel("paper: ImageNet-1K top-1 (%)" + (", mean ± std over 3 seeds" if paper_std.notna().any() else ""))

    ax_ours.set_yticks(y, _bar_labels(table))
    for label, is_adopted in zip(ax_ours.get_yticklabels(), adopted):
        label.set_color("black" if is_adopted else "grey")
    ax_ours.set_ylim(len(table) - 0.5, -1.0)  # baseline at top, room for the reference label
    for ax in (ax_ours, ax_paper):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "ours vs the paper (Fig. 2)")
    return fig


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
        label = f"{name} (ρ {_num(spearman(table)[0], '.2f')})"
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


def scatter_figure(table: pd.DataFrame, x: str, xlabel: str, title: str = "", column: str = "top1") -> Figure:
    """Our top-1 (mean ± std) against a per-rung column `x` of a ladder table (`ladder_table`), one
    labelled point per rung; the adopted rungs joined in ladder order, branches as hollow grey points."""
    table = table.dropna(subset=[f"{column}_mean", x])
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    path = table[table["adopted"] == "yes"]
    ax.plot(path[x], path[f"{column}_mean"], color=OURS_COLOR, alpha=0.35, linewidth=1)
    for _, row in table.iterrows():
        is_adopted = row["adopted"] == "yes"
        ax.errorbar(
            row[x], row[f"{column}_mean"], yerr=None if pd.isna(row[f"{column}_std"]) else row[f"{column}_std"],
            fmt="o", color=OURS_COLOR if is_adopted else "grey", mfc=OURS_COLOR if is_adopted else "white",
            capsize=2, markersize=6,
        )
        ax.annotate(row["step"], (row[x], row[f"{column}_mean"]), xytext=(4, 4), textcoords="offset points",
                    fontsize=7, color="black" if is_adopted else "grey")
    if table.empty:
        ax.text(0.5, 0.5, "no completed runs yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"ours: {'EMA ' if column == 'top1_ema' else ''}top-1 (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return fig


def top1_vs_gmacs_figure(table: pd.DataFrame, image_size: int | None = None, title: str = "") -> Figure:
    res = f"{image_size}²" if image_size else "the run's resolution"
    return scatter_figure(table, "gmacs", f"GMACs at {res}", title)


def top1_vs_throughput_figure(table: pd.DataFrame, title: str = "") -> Figure:
    return scatter_figure(table, "train_img_per_s", "measured training throughput (img/s)", title)


def _rungs(runs: pd.DataFrame, regime: str) -> Iterator[tuple[Any, str, bool, pd.DataFrame]]:
    """(colour, rung, dashed, its rows) per rung in ladder order: colours follow the ladder order,
    branches and variants are dashed."""
    rungs = runs.groupby(["order", "rung"], sort=True)
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.95, max(rungs.ngroups, 1)))
    branches = set(load_regime(regime).branches) if _known_regime(regime) else set()
    for color, ((_, rung), group) in zip(colors, rungs):
        yield color, rung, rung in branches or "-" in rung, group


def _label(rung: str, group: pd.DataFrame) -> str:
    seeds = group["seed"].nunique()
    return f"{rung} ({seeds} seed{'s' if seeds > 1 else ''})"


def _runs(curves: pd.DataFrame, regime: str, seed: int | None) -> pd.DataFrame:
    runs = curves[curves["regime"] == regime]
    return runs if seed is None else runs[runs["seed"] == seed]


def curves_figure(curves: pd.DataFrame, regime: str = DEFAULT_REGIME, seed: int | None = None, title: str = "") -> Figure:
    """Validation top-1 (raw and EMA) per epoch, one line per rung (mean over seeds, or `seed`);
    colours follow the ladder order, branches and variants dashed."""
    runs = _runs(curves, regime, seed)
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    lines = list(_rungs(runs, regime))
    for color, rung, dashed, group in lines:
        mean = group.groupby("epoch")[["val/top1", "val/top1_ema"]].mean()
        for ax, metric in zip(axes, ["val/top1", "val/top1_ema"]):
            ax.plot(mean.index + 1, mean[metric], color=color, linestyle="--" if dashed else "-", label=_label(rung, group))
    for ax, name in zip(axes, ["val top-1 (%)", "val top-1, EMA weights (%)"]):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if not lines:
            ax.text(0.5, 0.5, "no metrics.csv yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0].set_ylabel("top-1 (%)")
    if lines:
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title or f"{regime}: training curves ({'seed ' + str(seed) if seed is not None else 'mean over seeds'})")
    return fig


def _dynamics_title(column: str) -> str:
    name = column.removeprefix(DYN)
    if name == "grad_norm":
        return "global gradient norm (before clipping)"
    if name.startswith("update_ratio/"):
        return f"update/weight: {name.removeprefix('update_ratio/')}"
    stage, _, stat = name.partition("_")
    return f"{stage.replace('stage', 'stage ')}: " + (
        "residual stream RMS at its output" if stat == "rms" else "last block's branch RMS / input RMS")


def dynamics_figure(curves: pd.DataFrame, regime: str = DEFAULT_REGIME, seed: int | None = None, title: str = "") -> Figure:
    """Training dynamics per epoch (roadmap.diagnostics' dyn/ columns), one line per rung (mean over
    seeds, or `seed`), log scale: per stage the residual stream's RMS and the last block's branch
    ratio; the gradient norm and the update/weight ratios. Runs without these columns (recorded
    before them, or with trainer.diagnostics=false) are left out; with none, the figure says so."""
    runs = _runs(curves, regime, seed)
    columns = [c for c in runs if c.startswith(DYN) and runs[c].notna().any()]
    fig = Figure(figsize=(17, 10), layout="constrained")
    fig.suptitle(title or f"{regime}: training dynamics ({'seed ' + str(seed) if seed is not None else 'mean over seeds'})")
    if not columns:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no training-dynamics columns (dyn/…) in these runs' metrics.csv:\nrecorded before "
                "roadmap.diagnostics, or with trainer.diagnostics=false", ha="center", va="center", color="grey")
        return fig
    rows = [[c for c in columns if c.endswith("_rms")], [c for c in columns if c.endswith("_branch_ratio")],
            [c for c in columns if not c.endswith(("_rms", "_branch_ratio"))]]
    rows = [row for row in rows if row]
    lines = list(_rungs(runs.dropna(subset=columns, how="all"), regime))
    for subfig, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
        for ax, column in zip(subfig.subplots(1, len(row), squeeze=False)[0], row):
            for color, rung, dashed, group in lines:
                mean = group.groupby("epoch")[column].mean().dropna()
                ax.plot(mean.index + 1, mean, color=color, linestyle="--" if dashed else "-", label=_label(rung, group))
            if (runs[column].dropna() > 0).all():
                ax.set_yscale("log")
            ax.set_title(_dynamics_title(column), fontsize=8)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), fontsize=7, loc="outside right center")
    return fig


def report_figures(data: ReportData) -> dict[str, Figure]:
    """Every figure of the report, keyed by file stem (`ladder`, …; `_<regime>` outside r50)."""
    figures = {}
    for regime in data.regimes:
        suffix, name = _suffix(regime), f"{data.name} ({regime})"
        table = data.ladder(regime)
        figures[f"ladder{suffix}"] = ladder_figure(table, title=f"{name}: ours vs the paper's Figure 2")
        figures[f"top1_vs_gmacs{suffix}"] = top1_vs_gmacs_figure(table, data.image_size, title=name)
        figures[f"top1_vs_throughput{suffix}"] = top1_vs_throughput_figure(table, title=name)
        figures[f"curves{suffix}"] = curves_figure(data.curves, regime, title=f"{name}: training curves, mean over seeds")
        figures[f"dynamics{suffix}"] = dynamics_figure(data.curves, regime, title=f"{name}: training dynamics, mean over seeds")
        if data.compared:
            figures[f"compare{suffix}"] = comparison_figure(_ladders(data, regime), title=f"{regime} ladders compared with the paper's")
    return figures


def _short_title(title: str) -> str:
    return title.split(" (")[0]


def _suffix(regime: str) -> str:
    return "" if regime == DEFAULT_REGIME else f"_{regime}"


def save_figure(fig: Figure, path: Path) -> Path:
    """Save with reproducible output (no date in SVG, fixed SVG ids), so re-running does not churn git."""
    with matplotlib.rc_context({"svg.hashsalt": "roadmap"}):
        fig.savefig(path, dpi=150, metadata={"Date": None} if path.suffix == ".svg" else None)
    return path


def write_report(experiment_dir: str | Path, report_dir: str | Path | None = None,
                 formats: tuple[str, ...] | list[str] = ("png", "svg"), write_collect: bool = True,
                 control_dir: str | Path | None = None, compare_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """Write ladder.md and every figure in every format to report_dir (default
    <experiment_dir>/report); returns the files written. With `control_dir` (a factor study's
    control experiment), ladder.md also gets the factor table (`study_table`); with `compare_dirs`
    (other experiments), the `compare` figure and table."""
    data = load_report_data(experiment_dir, write_collect=write_collect)
    if control_dir is not None:
        data.control = load_report_data(control_dir)
    data.compared = [load_report_data(d) for d in compare_dirs]
    report_dir = Path(report_dir) if report_dir is not None else data.experiment_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in report_figures(data).items():
        written += [save_figure(fig, report_dir / f"{stem}.{fmt}") for fmt in formats]
    markdown = report_dir / "ladder.md"
    markdown.write_text(markdown_report(data, figure_format=formats[0] if formats else None))
    return [*written, markdown]


def _other_experiment(output_root: str, key: str, name: str) -> Path:
    """The experiment folder `name` under output_root, which must hold a results.csv (else exit 2)."""
    folder = rundir.experiment_dir(output_root, name)
    if not (folder / RESULTS_CSV).is_file():
        found = experiments_with(output_root, RESULTS_CSV)
        print(f"roadmap.report: error: {key}={name}: no results.csv in {folder}; experiments with one: "
              f"{', '.join(found) or 'none'}", file=sys.stderr)
        sys.exit(2)
    return folder


@hydra.main(config_path=str(conf_dir()), config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    experiment_dir = rundir.experiment_dir(cfg.output_root, cfg.experiment_name)
    if not list_runs(experiment_dir) and not (experiment_dir / RESULTS_CSV).is_file():
        print(f"roadmap.report: warning: no runs under {experiment_dir}: the paper's numbers alone", file=sys.stderr)
    control = _other_experiment(cfg.output_root, "control", cfg.control) if cfg.control else None
    compared = [_other_experiment(cfg.output_root, "compare", name) for name in cfg.compare]
    try:
        written = write_report(experiment_dir, cfg.report_dir, list(cfg.formats), control_dir=control, compare_dirs=compared)
    except ValueError as error:  # an invalid result.json, named
        print(f"roadmap.report: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(written)} files -> {Path(cfg.report_dir)}")
    for path in written:
        print(f"  {path.name}")


if __name__ == "__main__":
    matplotlib.use("Agg")
    main()
