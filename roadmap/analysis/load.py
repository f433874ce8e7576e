"""What a report draws, loaded from one experiment folder: the results table, its summary and every
run's per-epoch curves, from a single listing of the run directories (`rundir.list_runs`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from roadmap.analysis.results_table import collect, load_results, summarize
from roadmap.analysis.tables import DEFAULT_REGIME, ladder_table
from roadmap.ladder import ladder_order
from roadmap.reference import PAPER_COLUMNS
from roadmap.results import RESULT_FIELDS
from roadmap.rundir import RESULTS_CSV, RunDir, list_runs, read_history
from roadmap.tasks import TASK_CURVES

CURVE_COLUMNS = ["regime", "rung", "step", "variant", "seed", "order", "epoch", "val/top1", "val/top1_ema"]
DYN = "dyn/"  # roadmap.diagnostics' columns, kept in `curves` where a metrics.csv has them


@dataclass
class ReportData:
    """Everything a report draws: runs, per-rung summary, per-epoch curves."""

    experiment_dir: Path
    results: pd.DataFrame  # one row per run (results.csv)
    summary: pd.DataFrame  # one row per rung and variant (`summarize`)
    curves: pd.DataFrame  # one row per run and epoch (metrics.csv), CURVE_COLUMNS and any dyn/ columns
    control: ReportData | None = None  # a factor study's control experiment (its plain rungs)
    compared: list[ReportData] = field(default_factory=list)  # other experiments drawn beside this one
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # `ladder`'s, built once per regime

    def ladder(self, regime: str = DEFAULT_REGIME) -> pd.DataFrame:
        """The regime's ladder table (`ladder_table`), built on first use."""
        if regime not in self.tables:
            self.tables[regime] = ladder_table(self.summary, regime)
        return self.tables[regime]

    def plain_runs(self, regime: str = DEFAULT_REGIME) -> pd.DataFrame:
        """The regime's completed runs of plain rungs (no variant), one row per run and seed."""
        runs = self.results
        if runs.empty:
            return runs
        return runs[(runs["regime"] == regime) & (runs["status"] == "completed") & runs["variant"].isna()]

    def variant_runs(self, regime: str = DEFAULT_REGIME) -> pd.DataFrame:
        """The regime's completed runs of the rungs that have variants, the plain ones among them; empty
        when no run has a variant."""
        runs = self.results
        if runs.empty or runs["variant"].isna().all():
            return runs.iloc[0:0]
        runs = runs[(runs["regime"] == regime) & (runs["status"] == "completed")]
        return runs[runs["step"].isin(runs.loc[runs["variant"].notna(), "step"])]

    @property
    def task(self) -> str:
        """The runs' task (`task.name`): classification for runs recorded before tasks existed."""
        tasks = set(self.results.get("task", pd.Series(dtype=str)).dropna())
        return tasks.pop() if len(tasks) == 1 else "classification"

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


def load_curves(experiment_dir: Path, runs: list[RunDir] | None = None) -> pd.DataFrame:
    """Every run's metrics.csv (`runs`, default `rundir.list_runs(experiment_dir)`), finished or
    still running, stacked; the optimizer step of metrics.csv is `optimizer_step`, `step` is the rung's."""
    frames = []
    for run in list_runs(experiment_dir) if runs is None else runs:
        frame = pd.DataFrame(read_history(run.path))
        if frame.empty or "epoch" not in frame:
            continue
        frame = frame.rename(columns={"step": "optimizer_step"}).assign(
            regime=run.regime, rung=run.rung, step=run.step, variant=run.variant or "", seed=run.seed,
            order=ladder_order(run.regime, run.step),
        )
        frames.append(frame.reindex(columns=CURVE_COLUMNS + [c for c in frame if c.startswith(DYN) or c in TASK_CURVES]))
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True).sort_values(["regime", "order", "variant", "seed", "epoch"])


def load_report_results(experiment_dir: Path, runs: list[RunDir], write_collect: bool = False) -> pd.DataFrame:
    """results.csv as is, unless a run's result.json is newer, it lacks a result field (written by an
    older version) or it is absent: then `runs` are collected again, in memory, or with
    `write_collect` through `collect`, which rewrites results.csv and summary.csv."""
    table = experiment_dir / RESULTS_CSV
    records = [run.result_file for run in runs if run.result_file.is_file()]
    stale = bool(records) and (
        not table.is_file() or max(p.stat().st_mtime for p in records) > table.stat().st_mtime
    )
    results = pd.read_csv(table) if table.is_file() and not stale else None
    if records and (results is None or not set(RESULT_FIELDS) <= set(results.columns)):  # or an older schema
        return collect(experiment_dir, runs)[0] if write_collect else load_results(experiment_dir, runs)
    if results is None:
        return pd.DataFrame(columns=[*RESULT_FIELDS, *PAPER_COLUMNS, "order"])
    return results


def load_report_data(experiment_dir: str | Path, write_collect: bool = False,
                     runs: list[RunDir] | None = None) -> ReportData:
    """Results, summary and curves of one experiment folder (`load_report_results`, `load_curves`);
    empty tables when nothing has run. `runs`: the folder's run directories, when the caller listed
    them already; else listed here, once for results and curves."""
    experiment_dir = Path(experiment_dir)
    runs = list_runs(experiment_dir) if runs is None else runs
    results = load_report_results(experiment_dir, runs, write_collect)
    return ReportData(experiment_dir, results, summarize(results), load_curves(experiment_dir, runs))
