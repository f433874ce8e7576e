"""`python -m roadmap.status +roadmap=<preset> [experiment=…] [output_root=…]`: each rung of a
sweep as done / running / failed / interrupted / pending (the same arguments as roadmap.sweep)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from roadmap.ladder import LadderError, conf_dir
from roadmap.preset import SweepError, expand, passed_on_overrides, plan_rungs, status_table
from roadmap.rundir import refuse_unsafe_names


@hydra.main(config_path=str(conf_dir()), config_name="status", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        rungs, _ = expand(cfg)
        plan_rungs(rungs, passed_on_overrides())
        table = status_table(rungs)
    except (SweepError, LadderError, ValueError) as error:  # ValueError: also an invalid result.json, named
        print(f"roadmap.status: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(table)


if __name__ == "__main__":
    refuse_unsafe_names("roadmap.status", sys.argv)
    main()
