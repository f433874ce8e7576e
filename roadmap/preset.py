"""A sweep preset (conf/roadmap/<name>.yaml) expanded into its rungs: each rung's `roadmap.run`
overrides, its planned run directory and config hash, its state, and the status table that
`roadmap.sweep` and `roadmap.status` print."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from roadmap.ladder import LadderError, check_rung, compose_run, conf_dir, list_steps, load_regime, rung_name, step_chain
from roadmap.plan import plan_run
from roadmap.rundir import check_record, read_result, run_label, run_state

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
        return run_label(self.regime, self.step, self.variant, self.seed)

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
    if isinstance(value, str) and "," in value:  # a resolver's arguments: quoted, or Hydra reads a sweep
        return "'" + value.replace("'", "\\'") + "'"
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


def unreadable_files(rungs: list[Rung]) -> list[str]:
    """One line for each rung whose result.json or config.yaml cannot be read (its state: corrupt),
    naming the file and what to do."""
    lines = []
    for rung in rungs:
        try:
            check_record(rung.out_dir)
        except ValueError as error:
            lines.append(str(error))
    return lines
