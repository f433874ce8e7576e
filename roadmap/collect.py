"""`python -m roadmap.collect experiment=<preset> output_root=…`: one results table per experiment.

Writes <output_root>/<experiment>/results.csv and results.parquet (one row per run: every
result.json field, plus the paper's top-1 and GFLOPs for the rung: `paper_table`) and summary.csv (per rung:
mean, std and n over seeds of top-1 raw and EMA).
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from roadmap.ladder import LadderError, conf_dir, list_steps, load_regime
from roadmap.reference import paper_ladder
from roadmap.results import RESULT_FIELDS, train_loss_sum
from roadmap.rundir import (
    RESULT_FILE, RESULTS_CSV, RESULTS_PARQUET, SUMMARY_CSV, experiment_dir, list_runs, read_history, read_result,
)

PAPER_COLUMNS = ["paper_top1", "paper_top1_std", "paper_gflops"]
PAPER_ROWS = ["regime", "order", "step", "title", "adopted", *PAPER_COLUMNS]


def ladder_order(regime: str, step: str) -> int:
    """The rung's position in its regime's ladder (the baseline 0); 10 000 off the ladder."""
    try:
        return list_steps(regime, adopted_only=False).index(step)
    except (ValueError, LadderError):
        return 10_000


def paper_table(regime: str) -> pd.DataFrame:
    """The paper's rows of a regime (PAPER_ROWS), the one source of the paper columns: the package's
    reference for the ConvNeXt paper's regimes (r50, r200), else the regime YAML's `regime.paper`
    block ({step: {title, top1, top1_std, gflops}}), one row per rung, blank where it gives none."""
    reference = paper_ladder(regime)
    if not reference.empty:
        return reference[PAPER_ROWS]
    try:
        spec = load_regime(regime)
    except LadderError:  # results of a regime that is no longer configured
        return pd.DataFrame(columns=PAPER_ROWS)
    given = OmegaConf.to_container(spec.paper) if spec.get("paper") else {}
    rows = [{"regime": regime, "order": i, "step": step, "title": given.get(step, {}).get("title", step),
             "adopted": "no" if step in spec.branches else "yes",
             **{f"paper_{k}": given.get(step, {}).get(k) for k in ("top1", "top1_std", "gflops")}}
            for i, step in enumerate(list_steps(spec, adopted_only=False))]
    return pd.DataFrame(rows, columns=PAPER_ROWS).astype({c: float for c in PAPER_COLUMNS})


def load_results(folder: Path) -> pd.DataFrame:
    """Every run's result.json (`results.list_runs`), paper numbers joined. A run recorded before
    result.json had `train_loss_sum` gets it from its metrics.csv, as the run computes it."""
    rows = []
    for run in list_runs(folder):
        row = read_result(run.path)
        if row is not None:
            row["train_loss_sum"] = row.get("train_loss_sum") or train_loss_sum(read_history(run.path))
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


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per rung (regime, step, variant): mean, std and n over completed seeds."""
    done = results[results["status"] == "completed"].copy()
    done["variant"] = done["variant"].fillna("")
    summary = (
        done.groupby(["regime", "order", "step", "variant"], sort=True)
        .agg(
            top1_mean=("top1", "mean"), top1_std=("top1", "std"), n=("top1", "size"),
            top1_ema_mean=("top1_ema", "mean"), top1_ema_std=("top1_ema", "std"),
            train_loss_sum_mean=("train_loss_sum", "mean"),
            params=("params", "first"), gmacs=("gmacs", "first"), gmacs_224=("gmacs_224", "first"),
            train_img_per_s=("train_img_per_s", "mean"),
            paper_top1=("paper_top1", "first"), paper_top1_std=("paper_top1_std", "first"),
            paper_gflops=("paper_gflops", "first"),
        )
        .reset_index()
    )
    return summary


def collect(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    results = load_results(folder)
    if results.empty:
        raise FileNotFoundError(f"no {RESULT_FILE} in the run directories under {folder}")
    summary = summarize(results)
    results.to_csv(folder / RESULTS_CSV, index=False)
    results.to_parquet(folder / RESULTS_PARQUET, index=False)
    summary.to_csv(folder / SUMMARY_CSV, index=False)
    return results, summary


@hydra.main(config_path=str(conf_dir()), config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    folder = experiment_dir(cfg.output_root, cfg.experiment_name)
    try:
        results, summary = collect(folder)
    except (FileNotFoundError, ValueError) as error:  # ValueError: an invalid result.json, named
        print(f"roadmap.collect: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(summary.drop(columns=["order"]).to_string(index=False))
    print(f"{len(results)} runs -> {folder / RESULTS_CSV}, {RESULTS_PARQUET}, {SUMMARY_CSV}")


if __name__ == "__main__":
    main()
