"""ladder.md: run counts, then per regime the figures, the ladder table with its statistics (rank
correlation with the paper, ordered pairs, signs, seed noise), the variants and the proxy study's comparisons."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from roadmap.analysis.figures import regime_figures, regime_suffix
from roadmap.analysis.formatting import mean_std, num, short_title
from roadmap.analysis.load import ReportData
from roadmap.analysis.proxy_study import compared_ladders, comparison_table, study_table
from roadmap.analysis.tables import DEFAULT_REGIME, missing_rungs
from roadmap.ladder import list_steps
from roadmap.statistics import (
    NULL_RANKINGS, RANKINGS, beyond_noise, bootstrap_agreement, gain_agreement, ordered_pairs, seed_spread, spearman,
)

def status_note(data: ReportData, regime: str = DEFAULT_REGIME) -> str:
    """One line on how complete the experiment is, e.g. for a notebook."""
    missing, total = missing_rungs(data.summary, regime), len(list_steps(regime))
    variants = data.variant_runs(regime)
    if len(missing) == total and not variants.empty:
        return (f"{data.name} ({regime}): a study of variants: {len(variants)} completed runs of "
                f"{variants.groupby(['step', 'variant']).ngroups} variants, no plain rung.")
    if not missing:
        return f"{data.name} ({regime}): all {total} adopted rungs have results."
    if len(missing) == total:
        return f"{data.name} ({regime}): no completed runs under {data.experiment_dir} yet: the paper's numbers alone."
    return f"{data.name} ({regime}): {total - len(missing)} of {total} adopted rungs have results; missing: {', '.join(missing)}."


def downstream_table(runs: pd.DataFrame, task: str) -> str:
    """The downstream ladder in markdown: per rung (ladder order), the task's metrics (mean ± std (n) over
    seeds) and the top-1 of the classification runs they started from; the paper's ConvNeXt-T last."""
    from roadmap.reference import PAPER_DOWNSTREAM
    from roadmap.tasks import METRICS

    columns = [m for m in METRICS[task] if m in runs and runs[m].notna().any()] or list(METRICS[task][:1])
    lines = [f"| step | {' | '.join(columns)} | top-1 it started from |", "|---" * (len(columns) + 2) + "|"]
    for step, group in runs.sort_values("order").groupby("step", sort=False):
        cells = [mean_std(group[c].mean(), group[c].std(), group[c].notna().sum()) if c in group else "–"
                 for c in columns]
        source = group["init_top1"].mean() if "init_top1" in group else float("nan")
        lines.append(f"| `{step}` | {' | '.join(cells)} | {num(source)} |")
    paper = PAPER_DOWNSTREAM.get(task, {})
    lines.append(f"| paper: ConvNeXt-T, full scale | {' | '.join(num(paper.get(c)) for c in columns)} "
                 f"| {num(paper.get('init_top1'))} |")
    return "\n".join(lines)


def markdown_table(table: pd.DataFrame, image_size: int | None = None, runs: pd.DataFrame | None = None) -> str:
    """A ladder table (`ladder_table`) in markdown (ours beside the paper's, gains over the parent
    rung), then the Spearman rank correlation and the gain-sign agreement, and the agreement table
    (`agreement_table`; its intervals need `runs`, the regime's completed plain runs)."""
    res = f"{image_size}²" if image_size else "run res."
    lines = [
        f"| # | step | ours top-1 (n) | ours EMA top-1 | params (M) | GMACs @{res} | train img/s "
        "| paper top-1 | paper GFLOPs | Δ ours | Δ paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        name = {"no": f"`{row['step']}` (not adopted)", "ref": f"{short_title(row['title'])} (reference)"}.get(
            row["adopted"], f"`{row['step']}`")
        lines.append(
            f"| {'–' if row['number'] < 0 else row['number']} | {name} "
            f"| {mean_std(row['top1_mean'], row['top1_std'], row['n'])} "
            f"| {mean_std(row['top1_ema_mean'], row['top1_ema_std'])} "
            f"| {num(row['params'] / 1e6, '.3f')} | {num(row['gmacs'], '.4f')} | {num(row['train_img_per_s'], '.0f')} "
            f"| {mean_std(row['paper_top1'], row['paper_top1_std'])} | {num(row['paper_gflops'])} "
            f"| {num(row['gain'], signed=True)} | {num(row['paper_gain'], signed=True)} |"
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
        "",
        agreement_table(table, runs),
    ]
    return "\n".join(lines)


def agreement_table(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> str:
    """How well each ranking of the rungs agrees with the paper's top-1 (Spearman ρ, ordered pairs,
    step signs), with 95% bootstrap intervals over seeds, beside the predictors that train nothing
    (`statistics.NULL_RANKINGS`): a proxy is worth its compute only where it beats them."""
    runs = pd.DataFrame(columns=["step"]) if runs is None else runs
    lines = ["| ranked by | Spearman ρ [95% interval] | pairs as the paper [95% interval] | signs as the paper |",
             "|---|---|---|---|"]
    one_seed = False
    for name, (column, lower, run_column) in {**RANKINGS, **NULL_RANKINGS}.items():
        rho, _ = spearman(table, column, lower_is_better=lower)
        pairs, signs = ordered_pairs(table, column=column, lower_is_better=lower), gain_agreement(table, column, lower)
        interval = bootstrap_agreement(table, runs, column, lower, run_column) if run_column in runs else None
        one_seed |= run_column is not None and interval is None and not math.isnan(rho)
        rho_cell, pairs_cell = num(rho, ".3f"), f"{pairs[0]} of {pairs[1]}"
        if interval is not None:
            rho_cell += f" [{interval[0][0]:.2f}, {interval[0][1]:.2f}]"
            pairs_cell += f" [{interval[1][0]:.0f}, {interval[1][1]:.0f}]"
        lines.append(f"| {name} | {rho_cell} | {pairs_cell} | {signs[0]} of {signs[1]} |")
    lines.append("\nIntervals: resampling each rung's seeds (2,000 draws)."
                 + (" No interval where every rung has one seed." if one_seed else ""))
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
            f"| `{row['step']}` | `{row['variant']}` | {mean_std(row['top1_mean'], row['top1_std'], row['n'])} "
            f"| {num(row['top1_mean'] - base, signed=True)} | {num(row['params'] / 1e6, '.3f')} | {num(row['gmacs'], '.4f')} |"
        )
    return "\n".join(lines)


def markdown_report(data: ReportData, figure_format: str | None = "png") -> str:
    """The whole ladder.md: run counts, then per regime the figures, the ladder table and variants,
    and the proxy study's tables where `data` has a control or compared experiments."""
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
    parts.append("Top-1 in %: ours on this experiment's data (mean ± std over seeds), the paper's on ImageNet-1K at 224²."
                 if data.task == "classification" else f"The {data.task} metrics in %: ours on this experiment's data "
                 "(mean ± std over seeds), the paper's for ConvNeXt-T at full scale.")
    for regime in data.regimes:
        suffix = regime_suffix(regime)
        parts += ["", f"## {regime}", "", status_note(data, regime), ""]
        figures = regime_figures(data, regime)
        if figure_format:
            parts += [f"![{name}]({name}{suffix}.{figure_format})" for name in figures] + [""]
        if data.task != "classification":  # its table, not the classification ladder's
            parts.append(downstream_table(data.plain_runs(regime), data.task))
            continue
        if "ladder" in figures:
            parts.append(markdown_table(data.ladder(regime), data.image_size, data.plain_runs(regime)))
        variants = variants_table(data.summary, regime)
        if variants:
            parts += ["", "### Variants", ""]
            if figure_format and not data.variant_runs(regime).empty:
                parts += [f"![variants](variants{suffix}.{figure_format})", ""]
            parts.append(variants)
        if data.control is not None:
            study = study_table(data.summary, data.control.summary, regime)
            parts += ["", f"### Factor study (control: {data.control.name})", "", study or "no variants yet."]
        if data.compared:
            parts += ["", "### Compared experiments", ""]
            if figure_format:
                parts += [f"![compare](compare{suffix}.{figure_format})", ""]
            parts.append(comparison_table(compared_ladders(data, regime),
                                          {d.name: d.plain_runs(regime) for d in (data, *data.compared)}))
    return "\n".join(parts) + "\n"
