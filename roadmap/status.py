"""`python -m roadmap.status +roadmap=<preset> [experiment=…] [output_root=…]`: each rung of a
sweep as done / running / failed / interrupted / pending / … (the same arguments as roadmap.sweep).
A rung whose result.json or config.yaml cannot be read shows as `corrupt`, and is named in one
line on stderr after the table (exit 2)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from roadmap.ladder import LadderError, conf_dir
from roadmap.preset import SweepError, expand, passed_on_overrides, plan_rungs, status_table, unreadable_files
from roadmap.rundir import refuse_unsafe_names


@hydra.main(config_path=str(conf_dir()), config_name="status", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        rungs, _ = expand(cfg)
        plan_rungs(rungs, passed_on_overrides())
        table, unreadable = status_table(rungs), unreadable_files(rungs)
    except (SweepError, LadderError, ValueError) as error:
        print(f"roadmap.status: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(table)
    for line in unreadable:
        print(f"roadmap.status: error: {line}", file=sys.stderr)
    if unreadable:
        sys.exit(2)


if __name__ == "__main__":
    refuse_unsafe_names("roadmap.status", sys.argv)
    main()
