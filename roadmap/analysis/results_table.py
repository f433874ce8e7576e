"""An experiment's results table: one row per run (every result.json field, the paper's top-1 and
GFLOPs for the rung: `paper_table`), and its summary per rung (mean, std and n over seeds)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from roadmap.ladder import ladder_order
from roadmap.reference import PAPER_COLUMNS, paper_table
from roadmap.results import RESULT_FIELDS, final_val_loss, train_loss_sum
from roadmap.rundir import (
    RESULT_FILE, RESULTS_CSV, RESULTS_PARQUET, SUMMARY_CSV, RunDir, list_runs, read_history, read_result,
)


def load_results(folder: Path, runs: list[RunDir] | None = None) -> pd.DataFrame:
    """Every run's result.json (`runs`, default `rundir.list_runs(folder)`), paper numbers joined. A
    run recorded before result.json had `train_loss_sum` or `val_loss` gets them from its metrics.csv,
    as the run computes them."""
    rows = []
    for run in list_runs(folder) if runs is None else runs:
        row = read_result(run.path)
        if row is not None:
            if row.get("train_loss_sum") is None or row.get("val_loss") is None:
                history = read_history(run.path)
                row["train_loss_sum"] = row.get("train_loss_sum") or train_loss_sum(history)
                row["val_loss"] = row.get("val_loss") or final_val_loss(history)
            if row.get("task") not in (None, "classification") and row.get("init_from"):
                row["init_top1"] = _source_top1(Path(row["init_from"]))
            rows.append(row)
    columns = RESULT_FIELDS + sorted({k for r in rows for k in r} - set(RESULT_FIELDS))
    table = pd.DataFrame(rows, columns=columns)
    if "variant" not in table:
        table["variant"] = None
    paper = pd.concat([paper_table(r)[["regime", "step", *PAPER_COLUMNS]] for r in table["regime"].dropna().unique()]
                      or [pd.DataFrame(columns=["regime", "step", *PAPER_COLUMNS])])
    table = table.merge(paper, on=["regime", "step"], how="left")
    table.loc[table["variant"].notna(), PAPER_COLUMNS] = None  # a variant is not the paper's rung
    table["order"] = [ladder_order(r, s) for r, s in zip(table["regime"], table["step"])]
    return table.sort_values(["regime", "order", "variant", "seed"], na_position="first").reset_index(drop=True)


# The downstream tasks' headline metrics, summarized like top-1 (null for classification runs).
DOWNSTREAM_SUMMARY = ("ap_box", "ap_mask", "miou")


def _source_top1(init_from: Path) -> float | None:
    """The top-1 of the classification run a downstream run started from (result.json records the file it
    read: a run's last.ckpt), if recorded."""
    try:
        source = read_result(init_from.parent)
    except ValueError:
        return None
    return None if source is None else source.get("top1")


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per rung (regime, step, variant): mean, std and n over completed seeds."""
    done = results[results["status"] == "completed"].copy()
    # not fillna(""): a column without any variant reads as float, which refuses a str fill value
    done["variant"] = done["variant"].where(done["variant"].notna(), "")
    return (
        done.groupby(["regime", "order", "step", "variant"], sort=True)
        .agg(
            top1_mean=("top1", "mean"), top1_std=("top1", "std"), n=("top1", "size"),
            top1_ema_mean=("top1_ema", "mean"), top1_ema_std=("top1_ema", "std"),
            **{f"{m}_{stat}": (m, stat) for m in DOWNSTREAM_SUMMARY for stat in ("mean", "std")},
            train_loss_sum_mean=("train_loss_sum", "mean"), val_loss_mean=("val_loss", "mean"),
            params=("params", "first"), gmacs=("gmacs", "first"), gmacs_224=("gmacs_224", "first"),
            train_img_per_s=("train_img_per_s", "mean"),
            paper_top1=("paper_top1", "first"), paper_top1_std=("paper_top1_std", "first"),
            paper_gflops=("paper_gflops", "first"),
        )
        .reset_index()
    )


def collect(folder: Path, runs: list[RunDir] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The results table and its summary of an experiment folder, written there (results.csv,
    results.parquet, summary.csv); FileNotFoundError when no run has a result.json (nothing is written)."""
    results = load_results(folder, runs)
    if results.empty:
        raise FileNotFoundError(f"nothing to collect: no {RESULT_FILE} in the run directories under {folder} "
                                "(check experiment_name and output_root); nothing was written")
    summary = summarize(results)
    results.to_csv(folder / RESULTS_CSV, index=False)
    results.to_parquet(folder / RESULTS_PARQUET, index=False)
    summary.to_csv(folder / SUMMARY_CSV, index=False)
    return results, summary
