"""`python -m roadmap.report experiment=<preset> output_root=…`: figures and a table for one experiment.

Reads <output_root>/<experiment>/results.csv (collecting the run directories first when it is
absent or older than a result.json) and every run's metrics.csv, and writes to `report_dir`
(default <output_root>/<experiment>/report/): `ladder.md` and the figures `ladder`,
`top1_vs_gmacs` (beside the paper's ConvNeXt family), `top1_vs_throughput`, `curves` and `dynamics`
(and `variants` where runs have one, `compare` with `compare=[…]`) in each of `formats` (png, svg). Regimes other than r50 get
their own files, suffixed `_<regime>`. Rungs that have not run yet appear with the paper's numbers
alone. The work is `roadmap.analysis.write_report`; the notebooks in analysis/ call the same library.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import matplotlib
from omegaconf import DictConfig

from roadmap import rundir
from roadmap.analysis import write_report
from roadmap.ladder import conf_dir
from roadmap.rundir import RESULTS_CSV, experiments_with, list_runs, refuse_unsafe_names


def _other_experiment(output_root: str, key: str, name: str) -> Path:
    """The experiment folder `name` under output_root, which must hold a results.csv (else exit 2)."""
    folder = rundir.experiment_dir(output_root, name)
    if not (folder / RESULTS_CSV).is_file():
        found = experiments_with(output_root, RESULTS_CSV)
        print(f"roadmap.report: error: {key}={name}: no {RESULTS_CSV} in {folder}; experiments with one: "
              f"{', '.join(found) or 'none'}", file=sys.stderr)
        sys.exit(2)
    return folder


@hydra.main(config_path=str(conf_dir()), config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    experiment_dir = rundir.experiment_dir(cfg.output_root, cfg.experiment_name)
    runs = list_runs(experiment_dir)  # the one listing of its run directories, for the warning and the report
    if not runs and not (experiment_dir / RESULTS_CSV).is_file():
        print(f"roadmap.report: warning: no runs under {experiment_dir}: the paper's numbers alone", file=sys.stderr)
    control = _other_experiment(cfg.output_root, "control", cfg.control) if cfg.control else None
    compared = [_other_experiment(cfg.output_root, "compare", name) for name in cfg.compare]
    try:
        written = write_report(experiment_dir, cfg.report_dir, list(cfg.formats), control_dir=control,
                               compare_dirs=compared, runs=runs)
    except ValueError as error:  # an invalid result.json, named
        print(f"roadmap.report: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(written)} files -> {Path(cfg.report_dir)}")
    for path in written:
        print(f"  {path.name}")


if __name__ == "__main__":
    refuse_unsafe_names("roadmap.report", sys.argv)
    matplotlib.use("Agg")
    main()
