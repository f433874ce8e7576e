"""`python -m roadmap.collect experiment=<preset> output_root=…`: one results table per experiment.

Writes <output_root>/<experiment>/results.csv and results.parquet (one row per run: every
result.json field, plus the paper's top-1 and GFLOPs for the rung: `reference.paper_table`) and
summary.csv (per rung: mean, std and n over seeds of top-1 raw and EMA); see
`roadmap.analysis.results_table`.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from roadmap.analysis.results_table import collect
from roadmap.ladder import conf_dir
from roadmap.rundir import RESULTS_CSV, RESULTS_PARQUET, SUMMARY_CSV, experiment_dir, refuse_unsafe_names


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
    refuse_unsafe_names("roadmap.collect", sys.argv)
    main()
