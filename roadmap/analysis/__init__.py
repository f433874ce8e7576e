"""The analysis of an experiment folder, behind `python -m roadmap.collect` and `roadmap.report`
and the notebooks in analysis/:

- `results_table`: the results table and its per-rung summary (results.csv, summary.csv);
- `load`: what a report draws (`ReportData`), from one listing of the run directories;
- `tables`: the ladder table, ours beside the paper's;
- `figures`: the figures; `markdown`: ladder.md;
- `proxy_study`: a factor study against its control, and experiments' ladders compared.

`write_report` writes an experiment's report; the names below are the public API.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from roadmap.analysis.figures import (
    FIGURES, curves_figure, dynamics_figure, ladder_figure, report_figures, save_figure, scatter_figure,
    top1_vs_gmacs_figure, top1_vs_throughput_figure, variants_figure,
)
from roadmap.analysis.load import ReportData, load_curves, load_report_data
from roadmap.analysis.markdown import markdown_report, markdown_table, status_note, variants_table
from roadmap.analysis.proxy_study import comparison_figure, comparison_table, study_table
from roadmap.analysis.results_table import collect, load_results, summarize
from roadmap.analysis.tables import DEFAULT_REGIME, ladder_table, missing_rungs, parent_step
from roadmap.rundir import REPORT_DIR, REPORT_MD, RunDir
from roadmap.statistics import beyond_noise, gain_agreement, ordered_pairs, seed_spread, spearman

__all__ = [
    "DEFAULT_REGIME", "FIGURES", "ReportData", "beyond_noise", "collect", "comparison_figure",
    "comparison_table", "curves_figure", "dynamics_figure", "gain_agreement", "ladder_figure", "ladder_table",
    "load_curves", "load_report_data", "load_results", "markdown_report", "markdown_table", "missing_rungs",
    "ordered_pairs", "parent_step", "report_figures", "save_figure", "scatter_figure", "seed_spread", "spearman",
    "status_note", "study_table", "summarize", "top1_vs_gmacs_figure", "top1_vs_throughput_figure",
    "variants_figure", "variants_table", "write_report",
]


def write_report(experiment_dir: str | Path, report_dir: str | Path | None = None,
                 formats: tuple[str, ...] | list[str] = ("png", "svg"), write_collect: bool = True,
                 control_dir: str | Path | None = None, compare_dirs: Sequence[str | Path] = (),
                 runs: list[RunDir] | None = None) -> list[Path]:
    """Write ladder.md and every figure in every format to report_dir (default
    <experiment_dir>/report); returns the files written. With `control_dir` (a factor study's
    control experiment), ladder.md also gets the factor table (`study_table`); with `compare_dirs`
    (other experiments), the `compare` figure and table. `runs`: experiment_dir's run directories,
    when the caller listed them already."""
    data = load_report_data(experiment_dir, write_collect=write_collect, runs=runs)
    if control_dir is not None:
        data.control = load_report_data(control_dir)
    data.compared = [load_report_data(d) for d in compare_dirs]
    report_dir = Path(report_dir) if report_dir is not None else data.experiment_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in report_figures(data).items():
        written += [save_figure(fig, report_dir / f"{stem}.{fmt}") for fmt in formats]
    markdown = report_dir / REPORT_MD
    markdown.write_text(markdown_report(data, figure_format=formats[0] if formats else None))
    return [*written, markdown]
