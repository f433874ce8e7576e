"""The report's figures: the paper's Figure 2 with our results (`ladder_figure`), top-1 against
GMACs (beside the paper's ConvNeXt family, its Figure 1) and throughput, training curves and
training dynamics per epoch; `report_figures` draws all of an experiment's, keyed by file stem."""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from roadmap.analysis.formatting import short_title
from roadmap.analysis.load import DYN, ReportData
from roadmap.analysis.proxy_study import compared_ladders, comparison_figure
from roadmap.analysis.tables import DEFAULT_REGIME, FAMILY_REGIME, paper_figures
from roadmap.ladder import known_regime, load_regime
from roadmap.rundir import METRICS_FILE

FIGURES = ("ladder", "top1_vs_gmacs", "top1_vs_throughput", "curves", "dynamics")  # `variants` where runs have one
DOWNSTREAM_FIGURES = ("downstream", "curves", "dynamics")  # a downstream task's report
OURS_COLOR = "tab:blue"
PAPER_COLOR = "tab:orange"
PAPER_22K_COLOR = "tab:red"
BRANCH_COLOR = "lightgrey"


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
            ax_paper.text(ref["paper_top1"], -0.6, f" {short_title(ref['title'])}: {ref['paper_top1']:.1f}",
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


def _scatter(ax: Axes, table: pd.DataFrame, x: str, xlabel: str, column: str = "top1") -> None:
    """Our top-1 (mean ± std) against a per-rung column `x` of a ladder table on `ax`, one labelled
    point per rung; the adopted rungs joined in ladder order, branches as hollow grey points."""
    table = table.dropna(subset=[f"{column}_mean", x])
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


def scatter_figure(table: pd.DataFrame, x: str, xlabel: str, title: str = "", column: str = "top1") -> Figure:
    """Our top-1 against a per-rung column `x` of a ladder table (`ladder_table`), as `_scatter` draws it."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    _scatter(ax, table, x, xlabel, column)
    ax.set_title(title)
    return fig


def _family_panel(ax: Axes) -> None:
    """The paper's ConvNeXt family on `ax`, as its Figure 1: ImageNet-1K top-1 against GFLOPs at 224²,
    one marker per model (T, S, B, L, XL), trained on ImageNet-1K and pre-trained on ImageNet-22K as
    two series (conf/regime/family.yaml's `regime.paper`)."""
    family = paper_figures(FAMILY_REGIME)
    for column, label, color in (("paper_top1", "ImageNet-1K trained", PAPER_COLOR),
                                 ("paper_top1_22k", "ImageNet-22K pre-trained", PAPER_22K_COLOR)):
        points = family.dropna(subset=[column, "paper_gflops"])
        ax.plot(points["paper_gflops"], points[column], marker="o", color=color, label=label)
        for _, row in points.iterrows():
            ax.annotate(short_title(row["title"]).split("-")[-1], (row["paper_gflops"], row[column]),
                        xytext=(4, -10), textcoords="offset points", fontsize=7, color=color)
    ax.set_xlabel("GFLOPs at 224²")
    ax.set_ylabel("paper: ImageNet-1K top-1 (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title("paper: the ConvNeXt family (its Fig. 1)")


def top1_vs_gmacs_figure(table: pd.DataFrame, image_size: int | None = None, title: str = "") -> Figure:
    """Our top-1 against GMACs (`_scatter`) beside the paper's ConvNeXt family (`_family_panel`), in
    every report whatever the regime: two panels, as our GMACs are at the run's resolution, on its data."""
    res = f"{image_size}²" if image_size else "the run's resolution"
    fig = Figure(figsize=(14, 5.5), layout="constrained")
    ours, paper = fig.subplots(1, 2)
    _scatter(ours, table, "gmacs", f"GMACs at {res}")
    ours.set_title("ours")
    _family_panel(paper)
    fig.suptitle(title)
    return fig


def top1_vs_throughput_figure(table: pd.DataFrame, title: str = "") -> Figure:
    return scatter_figure(table, "train_img_per_s", "measured training throughput (img/s)", title)


def _rungs(runs: pd.DataFrame, regime: str) -> Iterator[tuple[Any, str, bool, pd.DataFrame]]:
    """(colour, rung, dashed, its rows) per rung in ladder order: colours follow the ladder order,
    branches and variants are dashed."""
    rungs = runs.groupby(["order", "rung"], sort=True)
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.95, max(rungs.ngroups, 1)))
    branches = set(load_regime(regime).branches) if known_regime(regime) else set()
    for color, ((_, rung), group) in zip(colors, rungs):
        yield color, rung, rung in branches or "-" in rung, group


def _label(rung: str, group: pd.DataFrame) -> str:
    seeds = group["seed"].nunique()
    return f"{rung} ({seeds} seed{'s' if seeds > 1 else ''})"


# One convention everywhere: run.log, metrics.csv, checkpoints and figures count epochs from 0 (as Lightning and timm).
EPOCH_LABEL = "epoch (0 = the first, as in run.log and metrics.csv)"


def _runs(curves: pd.DataFrame, regime: str, seed: int | None) -> pd.DataFrame:
    runs = curves[curves["regime"] == regime]
    return runs if seed is None else runs[runs["seed"] == seed]


# The curves of a task's validation metrics: (metrics.csv column, panel title); a downstream task's panels
# are drawn where its runs have them (task.eval_train's scores of the training images).
METRIC_LABELS = {"ap_box": "AP$^{box}$", "ap_mask": "AP$^{mask}$", "miou": "mIoU", "aacc": "pixel accuracy"}
# Each task's curve panels: (metrics.csv column, axis label). Detection: val, then the training images (task.eval_train).
CURVE_PANELS = {"classification": (("val/top1", "val top-1 (%)"), ("val/top1_ema", "val top-1, EMA weights (%)")),
                "detection": tuple((f"val/{name}{suffix}", f"{METRIC_LABELS[name]}, {images} (%)")
                                   for suffix, images in (("", "val"), ("_train", "the training images"))
                                   for name in ("ap_box", "ap_mask")),
                "segmentation": tuple((f"val/{name}", f"{METRIC_LABELS[name]}, val (%)") for name in ("miou", "aacc"))}


def curves_figure(curves: pd.DataFrame, regime: str = DEFAULT_REGIME, seed: int | None = None, title: str = "",
                  task: str = "classification") -> Figure:
    """The task's validation metrics per epoch (classification: top-1, raw and EMA), one line per rung
    (mean over seeds, or `seed`); colours follow the ladder order, branches and variants dashed."""
    runs = _runs(curves, regime, seed)
    panels = [(c, name) for c, name in CURVE_PANELS[task] if task == "classification" or c in runs and runs[c].notna().any()]
    panels = panels or list(CURVE_PANELS[task][:1])
    runs = runs.reindex(columns=[*runs.columns, *(c for c, _ in panels if c not in runs)])
    columns = [c for c, _ in panels]
    rows = math.ceil(len(panels) / 2)
    fig = Figure(figsize=(13 if len(panels) > 1 else 7, 5 * rows), layout="constrained")
    axes = fig.subplots(rows, min(len(panels), 2), sharey=task == "classification", squeeze=False).ravel()
    lines = [line for line in _rungs(runs, regime) if line[3][columns[0]].notna().any()]
    for color, rung, dashed, group in lines:
        mean = group.groupby("epoch")[columns].mean().dropna(how="all")
        for ax, metric in zip(axes, columns):
            ax.plot(mean.index, mean[metric], color=color, linestyle="--" if dashed else "-", marker="o",
                    markersize=3, label=_label(rung, group))
    empty = f"no {METRICS_FILE} yet" if runs.empty else "no validation yet (validated every trainer.check_val_every_n_epoch)"
    for ax, (_, name) in zip(axes, panels):
        ax.set_xlabel(EPOCH_LABEL)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if not lines:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes[len(panels):]:  # an odd panel count's empty slot
        ax.set_visible(False)
    axes[0].set_ylabel("top-1 (%)" if task == "classification" else "%")
    if lines:
        axes[min(len(panels), 2) - 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
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
        ax.text(0.5, 0.5, f"no training-dynamics columns (dyn/…) in these runs' {METRICS_FILE}:\nrecorded before "
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
                ax.plot(mean.index, mean, color=color, linestyle="--" if dashed else "-", marker="o", markersize=3,
                        label=_label(rung, group))
            if (runs[column].dropna() > 0).all():
                ax.set_yscale("log")
            ax.set_title(_dynamics_title(column), fontsize=8)
            ax.set_xlabel(EPOCH_LABEL)
            ax.grid(alpha=0.3)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), fontsize=7, loc="outside right center")
    return fig


DOWNSTREAM_PANELS = {"detection": (("ap_box", METRIC_LABELS["ap_box"]), ("ap_mask", METRIC_LABELS["ap_mask"])),
                     "segmentation": (("miou", f"{METRIC_LABELS['miou']} (single-scale)"),)}


def downstream_figure(runs: pd.DataFrame, task: str, title: str = "") -> Figure:
    """The downstream ladder: per rung (ladder order), the task's metrics (mean ± std over seeds, each seed
    a dot) beside the ImageNet top-1 of the classification runs they started from (`init_top1`), with the
    paper's ConvNeXt-T figure as the endpoint (a dashed line: its full-scale setting, not this run's)."""
    from roadmap.reference import PAPER_DOWNSTREAM

    panels = [*DOWNSTREAM_PANELS[task], ("init_top1", "top-1 of the classification run it starts from")]
    fig = Figure(figsize=(5 * len(panels), 4.5), layout="constrained")
    fig.suptitle(title or f"downstream ladder ({task})")
    rungs = runs.sort_values("order").drop_duplicates("step")["step"].tolist()
    x = {step: i for i, step in enumerate(rungs)}
    for ax, (column, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        values = runs[["step", column]].dropna() if column in runs else pd.DataFrame(columns=["step", column])
        if values.empty:
            ax.text(0.5, 0.5, f"no {column} in these runs", ha="center", va="center", color="grey",
                    transform=ax.transAxes)
        else:
            ax.scatter([x[s] for s in values["step"]], values[column], color=OURS_COLOR, s=12, alpha=0.5)
            stats = values.groupby("step")[column].agg(["mean", "std"]).reindex(rungs)
            ax.errorbar(range(len(rungs)), stats["mean"], yerr=stats["std"].fillna(0), color=OURS_COLOR, marker="o",
                        capsize=3, label="ours, mean ± std over seeds")
        paper = PAPER_DOWNSTREAM.get(task, {}).get(column)
        if paper is not None:
            ax.axhline(paper, color=PAPER_COLOR, linestyle="--", linewidth=1,
                       label=f"paper, ConvNeXt-T at full scale: {paper}")
        ax.set_xticks(range(len(rungs)), rungs, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def variants_figure(runs: pd.DataFrame, title: str = "") -> Figure:
    """A study's variants (e.g. pre-training and fine-tuning, leave-one-out): per variant its top-1
    (mean ± std over seeds, each seed a dot), with the resolution and classes it was measured at,
    its plain rung's runs (grey) above it. `runs`: `ReportData.variant_runs`."""
    runs = runs.assign(variant=runs["variant"].where(runs["variant"].notna(), ""))
    groups = list(runs.groupby(["order", "step", "variant"], sort=True))
    fig = Figure(figsize=(9, 1.4 + 0.45 * len(groups)), layout="constrained")
    ax = fig.subplots()
    for y, ((_, step, variant), group) in enumerate(groups):
        color = OURS_COLOR if variant else "grey"
        mean, std = group["top1"].mean(), group["top1"].std()
        ax.barh(y, mean, height=0.6, color=color, alpha=0.35, xerr=None if pd.isna(std) else std,
                error_kw={"elinewidth": 1, "capsize": 3})
        ax.scatter(group["top1"], [y] * len(group), color=color, s=14, zorder=3)
        sizes = ", ".join(f"{int(v)} px" for v in group["image_size"].dropna().unique())
        classes = ", ".join(f"{int(v)} classes" for v in group["num_classes"].dropna().unique())
        seeds = f"{len(group)} seed{'s' if len(group) > 1 else ''}"
        ax.text(max(group["top1"].max(), mean + (0 if pd.isna(std) else std)) + 1.5, y,
                f"{mean:.2f}  ({sizes}, {classes}; {seeds})", va="center", fontsize=7)
    ax.set_yticks(range(len(groups)), [f"{step} · {variant or 'plain rung'}" for (_, step, variant), _ in groups])
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xlim(0, max(100.0, runs["top1"].max() + 25) if len(runs) else 100.0)
    ax.set_xlabel("ours: top-1 (%) at the run's resolution and classes, mean ± std over seeds (dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "variants")
    return fig


def report_figures(data: ReportData) -> dict[str, Figure]:
    """Every figure of the report, keyed by file stem (`ladder`, …; `_<regime>` outside r50)."""
    figures = {}
    for regime in data.regimes:
        suffix, name = regime_suffix(regime), f"{data.name} ({regime})"
        draw = {
            "downstream": lambda: downstream_figure(data.plain_runs(regime), data.task,
                                                    title=f"{name}: the downstream ladder ({data.task})"),
            "ladder": lambda: ladder_figure(data.ladder(regime), title=f"{name}: ours vs the paper's Figure 2"),
            "top1_vs_gmacs": lambda: top1_vs_gmacs_figure(data.ladder(regime), data.image_size, title=name),
            "top1_vs_throughput": lambda: top1_vs_throughput_figure(data.ladder(regime), title=name),
            "curves": lambda: curves_figure(data.curves, regime, title=f"{name}: training curves, mean over seeds",
                                            task=data.task),
            "dynamics": lambda: dynamics_figure(data.curves, regime, title=f"{name}: training dynamics, mean over seeds"),
        }
        figures |= {f"{stem}{suffix}": draw[stem]() for stem in regime_figures(data, regime)}
        variants = data.variant_runs(regime)
        if data.task == "classification" and not variants.empty:  # top-1 per variant
            figures[f"variants{suffix}"] = variants_figure(variants, title=f"{name}: variants")
        if data.compared:
            figures[f"compare{suffix}"] = comparison_figure(compared_ladders(data, regime), title=f"{regime} ladders compared with the paper's")
    return figures


def regime_figures(data: ReportData, regime: str) -> tuple[str, ...]:
    """The figures of a regime's report, in ladder.md's order (`variants` and `compare` have their own
    sections): a downstream task's own; a classification ladder's, without the ladder's three when the
    regime's runs are all variants (a study such as pre-training and fine-tuning: no rung to compare)."""
    if data.task != "classification":
        return DOWNSTREAM_FIGURES
    if data.plain_runs(regime).empty and not data.variant_runs(regime).empty:
        return ("curves", "dynamics")
    return FIGURES


def regime_suffix(regime: str) -> str:
    """A regime's file-name suffix: none for the default regime, `_<regime>` for the others."""
    return "" if regime == DEFAULT_REGIME else f"_{regime}"


def save_figure(fig: Figure, path: Path) -> Path:
    """Save with reproducible output (no date in SVG, fixed SVG ids), so re-running does not churn git."""
    with matplotlib.rc_context({"svg.hashsalt": "roadmap"}):
        fig.savefig(path, dpi=150, metadata={"Date": None} if path.suffix == ".svg" else None)
    return path
