"""`python -m roadmap.sweep +roadmap=<preset> [experiment=…] [launcher=local|local_parallel|slurm] …`

Runs every rung of a roadmap preset (conf/roadmap/), one `python -m roadmap.run` process (or DDP
process group, or SLURM job) per rung, never Hydra multirun: Lightning starts DDP ranks by
re-running the command line, which must be a single run. Completed rungs are skipped, interrupted
ones resume from their last.ckpt, a failed rung does not stop the others, and the sweep exits
non-zero naming the failed rungs.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from roadmap.launch import launch_local, stopped_by_signal
from roadmap.ladder import LadderError, conf_dir
from roadmap.preset import SweepError, expand, passed_on_overrides, plan_rungs, status_of, status_table
from roadmap.rundir import refuse_unsafe_names
from roadmap.signals import Interrupted, exit_by_signal, raise_on_signals

log = logging.getLogger("roadmap.sweep")


def run_sweep(cfg: DictConfig) -> int:
    rungs, impossible = expand(cfg)
    for step, why in impossible.items():
        log.info("leave-one-out: %s cannot be removed alone: %s", step, why)
    passed_on = passed_on_overrides()
    plan_rungs(rungs, passed_on)
    states = {r.label: status_of(r) for r in rungs}
    conflicts = [r.label for r in rungs if states[r.label] == "conflict"]
    if conflicts:
        raise SweepError(f"these rungs' directories hold runs of a different config: {conflicts}; "
                         "use another experiment_name or output_root, or remove them")
    todo = [r for r in rungs if states[r.label] not in ("done", "running")]
    log.info("%d rungs: %d done, %d running elsewhere, %d to run (%s launcher)", len(rungs),
             sum(s == "done" for s in states.values()), sum(s == "running" for s in states.values()),
             len(todo), cfg.launcher.name)
    if cfg.launcher.name == "slurm":
        from roadmap.slurm import launch_slurm

        codes = launch_slurm(todo, passed_on, cfg)
    else:
        codes = launch_local(todo, passed_on, cfg.launcher, int(cfg.trainer.devices) if str(cfg.trainer.devices).isdigit() else 1)
    print(status_table(rungs))
    interrupted = [r.label for r in rungs if codes.get(r.label, 0) != 0 and stopped_by_signal(r, codes[r.label])]
    failed = [r.label for r in rungs if r.label not in interrupted
              and (status_of(r) == "failed" or codes.get(r.label, 0) != 0)]
    if failed:
        print(f"roadmap.sweep: {len(failed)} rung(s) failed: {', '.join(failed)}", file=sys.stderr)
    if interrupted:
        print(f"roadmap.sweep: {len(interrupted)} rung(s) interrupted (the same command resumes them): "
              f"{', '.join(interrupted)}", file=sys.stderr)
    return 1 if failed or interrupted else 0


@hydra.main(config_path=str(conf_dir()), config_name="sweep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    raise_on_signals()
    try:
        code = run_sweep(cfg)
    except (SweepError, LadderError, ValueError) as error:
        print(f"roadmap.sweep: error: {error}", file=sys.stderr)
        code = 2
    except Interrupted as stop:
        print(f"roadmap.sweep: interrupted by {stop}; the same command resumes the sweep", file=sys.stderr)
        exit_by_signal(stop.signum)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    refuse_unsafe_names("roadmap.sweep", sys.argv)
    main()
