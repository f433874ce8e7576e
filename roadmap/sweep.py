"""`python -m roadmap.sweep +roadmap=<preset> [experiment=…] [launcher=local|local_parallel|slurm] …`

Runs every rung of a roadmap preset (conf/roadmap/), one `python -m roadmap.run` process (or DDP
process group, or SLURM job) per rung, never Hydra multirun: Lightning starts DDP ranks by
re-running the command line, which must be a single run. Completed rungs are skipped, interrupted
ones resume from their last.ckpt, a failed rung does not stop the others, and the sweep exits
non-zero naming the failed rungs.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from roadmap.ladder import (
    LadderError, check_rung, compose_run, conf_dir, list_steps, load_regime, rung_dir, rung_name, step_chain,
)
from roadmap.results import read_result, run_state
from roadmap.signals import Interrupted, exit_by_signal, raise_on_signals, was_interrupted

log = logging.getLogger("roadmap.sweep")

# Keys that belong to the sweep, not to the runs it launches.
SWEEP_ONLY_PREFIXES = ("+roadmap", "roadmap", "launcher", "hydra", "~roadmap")


class SweepError(ValueError):
    """A roadmap preset or sweep option that cannot work."""


@dataclass
class Rung:
    """One run of the sweep: its label, the `roadmap.run` overrides, where it writes."""

    step: str  # the rung's name (a delta list's: `ladder.rung_name`)
    seed: int
    regime: str
    variant: str | None = None
    variant_overrides: dict[str, Any] = field(default_factory=dict)  # dotted run-config key -> value
    deltas: list[str] | None = None  # an explicit delta list instead of the chain to `step`
    out_dir: Path = Path()
    config_hash: str = ""

    @property
    def label(self) -> str:
        return f"{self.regime}/{rung_dir(self.step, self.variant)}/seed{self.seed}"

    def overrides(self, passed_on: Sequence[str]) -> list[str]:
        rung = f"step={self.step}" if self.deltas is None else f"deltas={_override_value(self.deltas)}"
        own = [f"regime={self.regime}", rung, f"seed={self.seed}"]
        if self.variant is not None:
            own.append(f"variant={self.variant}")
        own += [f"{k}={_override_value(v)}" for k, v in self.variant_overrides.items()]
        own_keys = {o.split("=", 1)[0] for o in own}
        return [o for o in passed_on if o.split("=", 1)[0].lstrip("+~") not in own_keys] + own

    def command(self, passed_on: Sequence[str]) -> list[str]:
        """The rung's `python -m roadmap.run` command line (what launchers start)."""
        return [sys.executable, "-m", "roadmap.run", *self.overrides(passed_on)]


def _override_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def leave_one_out(endpoint: str, regime: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The endpoint's chain with each delta taken out in turn: ({rung name: deltas}, {step: the
    builder's reason it cannot be taken out alone}). Taking out the last delta is the previous rung."""
    chain = step_chain(endpoint, regime)
    rungs, impossible = {}, {}
    for step in chain:
        deltas = [d for d in chain if d != step]
        try:
            check_rung(regime=regime, deltas=deltas)
        except LadderError as error:
            impossible[step] = str(error)
            continue
        rungs[rung_name(deltas, load_regime(regime))] = deltas
    return rungs, impossible


def expand(cfg: DictConfig) -> tuple[list[Rung], dict[str, str]]:
    """The preset's rungs (seed-major: a whole ladder before the next seed) and, for
    leave-one-out, the deltas that cannot be removed alone."""
    if "roadmap" not in cfg:
        presets = sorted(p.stem for p in (conf_dir() / "roadmap").glob("*.yaml"))
        raise SweepError(f"choose a roadmap preset with +roadmap=<name>; valid presets: {presets}")
    preset, regime = cfg.roadmap, cfg.roadmap.regime
    load_regime(regime)
    steps = preset.steps
    if steps in ("adopted", "with_branches"):
        steps = list_steps(regime, adopted_only=steps == "adopted")
    for step in steps:
        step_chain(step, regime)  # a clear error for an unknown step
    seeds = list(preset.seeds) if preset.seeds is not None else [int(cfg.seed)]
    taken_out, impossible = ({}, {})
    if preset.leave_one_out:
        taken_out, impossible = leave_one_out(preset.leave_one_out, regime)
    factors = OmegaConf.to_container(preset.variants) if preset.get("variants") else {}
    for name, overrides in factors.items():
        if not isinstance(overrides, dict) or "-" in name or "/" in name:
            raise SweepError(f"roadmap.variants.{name}={overrides!r}: a variant is a name without '-' or '/' "
                             "mapping to {dotted.run.key: value}")
    rungs = []
    for seed in seeds:
        if preset.get("plain", True):
            rungs += [Rung(step, int(seed), regime) for step in steps]
        rungs += [Rung(name, int(seed), regime, deltas=deltas) for name, deltas in taken_out.items()]
        rungs += [Rung(step, int(seed), regime, name, ov) for name, ov in factors.items() for step in steps]
    return rungs, impossible


def passed_on_overrides() -> list[str]:
    """The command line's overrides that every run gets (not the sweep's own keys)."""
    task = list(HydraConfig.get().overrides.task)
    return [o for o in task if not o.lstrip("+~").split("=", 1)[0].split(".")[0] in ("roadmap", "launcher", "hydra")]


def plan_rungs(rungs: list[Rung], passed_on: list[str]) -> None:
    """Fill in each rung's output directory and config hash, composed exactly as roadmap.run does."""
    from roadmap.run import plan_run

    for rung in rungs:
        plan = plan_run(compose_run(rung.overrides(passed_on)))
        rung.out_dir, rung.config_hash = plan.out_dir, plan.config_hash


def status_of(rung: Rung) -> str:
    """The rung's state (`results.run_state`) against its planned config hash."""
    return run_state(rung.out_dir, rung.config_hash)


def status_table(rungs: list[Rung]) -> str:
    lines = [f"{'rung':44s} {'status':12s} {'top1':>7s}  directory"]
    for rung in rungs:
        state = status_of(rung)
        result = read_result(rung.out_dir) if state in ("done", "failed") else None
        top1 = f"{result['top1']:.2f}" if result and result.get("top1") is not None else "-"
        lines.append(f"{rung.label:44s} {state:12s} {top1:>7s}  {rung.out_dir}")
    return "\n".join(lines)


def visible_devices(slot: int, devices_per_run: int, runs_per_device: int) -> str:
    """CUDA_VISIBLE_DEVICES of the run in parallel slot `slot`: `runs_per_device` consecutive slots share
    one group of `devices_per_run` GPUs (slot // runs_per_device is the group)."""
    first = slot // runs_per_device * devices_per_run
    return ",".join(str(first + i) for i in range(devices_per_run))


def launch_local(rungs: list[Rung], passed_on: list[str], launcher: DictConfig, trainer_devices: int) -> dict[str, int]:
    """Run rungs as child processes, `max_parallel` at a time (1 for launcher=local), `runs_per_device`
    of them on each device group; each child's output goes to <out_dir>/stdout.log. A rung that another
    sweep has finished or started by its turn is skipped, so that two sweeps of one ladder share its
    rungs. Returns {label: exit code} of the rungs started."""
    parallel = int(launcher.get("max_parallel", 1))
    per_run = int(launcher.get("devices_per_run", trainer_devices) or 1)
    sharing = launcher.get("runs_per_device", 1)
    if isinstance(sharing, bool) or not isinstance(sharing, int) or sharing < 1:
        raise SweepError(f"launcher.runs_per_device={sharing!r} must be an integer >= 1")
    threads = max(1, (os.cpu_count() or 1) // parallel)
    pending, running, codes = list(rungs), {}, {}
    free_slots = list(range(parallel))
    try:
        while pending or running:
            while pending and free_slots:
                rung = pending.pop(0)
                state = status_of(rung)
                if state in ("done", "running"):  # another sweep finished or started it since the plan
                    log.info("skip  %s: %s elsewhere since the sweep started", rung.label, state)
                    continue
                slot = free_slots.pop(0)
                env = dict(os.environ)
                if parallel > 1:
                    env["OMP_NUM_THREADS"] = str(threads)
                    if os.environ.get("CUDA_VISIBLE_DEVICES") is None and _gpu_count() > 0:
                        env["CUDA_VISIBLE_DEVICES"] = visible_devices(slot, per_run, sharing)
                rung.out_dir.mkdir(parents=True, exist_ok=True)
                stream = open(rung.out_dir / "stdout.log", "a")
                log.info("start %s", rung.label)
                proc = subprocess.Popen(rung.command(passed_on), env=env, stdout=stream, stderr=subprocess.STDOUT)
                running[proc] = (rung, slot, stream, time.monotonic())
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                rung, slot, stream, started = running.pop(proc)
                stream.close()
                free_slots.append(slot)
                codes[rung.label] = proc.returncode
                log.info("end   %s: %s in %.0fs", rung.label, _outcome(rung, proc.returncode), time.monotonic() - started)
    except Interrupted as stop:  # pass the signal on to the running rungs; each stops as a resumable run
        for proc, (rung, _, stream, _) in running.items():
            proc.send_signal(stop.signum)
            proc.wait()
            stream.close()
            codes[rung.label] = proc.returncode
            log.info("end   %s: %s", rung.label, _outcome(rung, proc.returncode))
        raise
    return codes


def _stopped_by_signal(rung: Rung, code: int) -> bool:
    """Its process died of SIGTERM/SIGINT, or (a SLURM job's exit code says less) its result says so."""
    result = read_result(rung.out_dir)
    return was_interrupted(code) or (result is not None and result.get("status") == "interrupted")


def _outcome(rung: Rung, code: int) -> str:
    if code == 0:
        return "ok"
    what = "interrupted" if was_interrupted(code) else "FAILED"
    return f"{what} (exit {code}, see {rung.out_dir}/stdout.log)"


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


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
    interrupted = [r.label for r in rungs if codes.get(r.label, 0) != 0 and _stopped_by_signal(r, codes[r.label])]
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
    main()
