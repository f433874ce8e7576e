"""The ladder: which steps a regime has, in which order, and how a rung's ArchConfig is composed.

A rung is its regime's baseline `arch` with every step delta up to and including it applied in
order (conf/regime/<regime>.yaml lists the order in one place; conf/steps/<step>.yaml holds each delta,
conf/steps/<regime>/<step>.yaml a regime-specific one). A not-adopted branch (kernel_5, …) is
the rung it branches off plus its own delta. The CLI and `build_model` both compose through
`compose_arch`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from roadmap.model.config import ArchConfig, ArchConfigError


class LadderError(ValueError):
    """An unknown regime or step, or a bad builder override."""


def rung_dir(step: str, variant: str | None = None) -> str:
    """A rung's directory name: the step, or `<step>-<variant>` for a named variant."""
    return step if variant in (None, "", "null") else f"{step}-{variant}"


if not OmegaConf.has_resolver("rung_dir"):
    OmegaConf.register_new_resolver("rung_dir", rung_dir)


def conf_dir() -> Path:
    """The Hydra config folder: `roadmap/conf` in an installed wheel, `conf/` in a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no roadmap config folder (train.yaml) beside {package}")


def list_regimes() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "regime").glob("*.yaml"))


def load_regime(regime: str) -> DictConfig:
    path = conf_dir() / "regime" / f"{regime}.yaml"
    if not path.is_file():
        raise LadderError(f"regime={regime!r} is unknown; valid regimes: {list_regimes()}")
    return OmegaConf.load(path)


def list_steps(regime: str = "r50", adopted_only: bool = True) -> list[str]:
    """Rung names in the paper's order, the baseline first; `adopted_only=False` also lists the
    branches that were tried and not adopted (kernel_5, kernel_9, kernel_11)."""
    spec = load_regime(regime)
    return [spec.baseline, *(s for s in spec.steps if adopted_only is False or s not in spec.branches)]


def step_chain(step: str, regime: str = "r50") -> list[str]:
    """The deltas that make `step`, in order (empty for the baseline)."""
    spec = load_regime(regime)
    if step == spec.baseline:
        return []
    if step in spec.branches:
        return [*step_chain(spec.branches[step], regime), step]
    adopted = list_steps(regime)[1:]
    if step in adopted:
        return adopted[: adopted.index(step) + 1]
    valid = list_steps(regime, adopted_only=False)
    raise LadderError(f"step={step!r} is not a step of regime {regime!r}; valid steps: {valid}")


def load_delta(step: str, regime: str) -> DictConfig:
    specific = conf_dir() / "steps" / regime / f"{step}.yaml"
    return OmegaConf.load(specific if specific.is_file() else conf_dir() / "steps" / f"{step}.yaml")


def compose_arch(step: str, regime: str = "r50", overrides: Mapping[str, Any] | None = None) -> ArchConfig:
    """The rung's ArchConfig: baseline ⊕ deltas up to `step` ⊕ `overrides` (None values skipped)."""
    chain = step_chain(step, regime)
    merged: dict[str, Any] = OmegaConf.to_container(load_regime(regime).arch)
    for name in chain:
        merged.update(OmegaConf.to_container(load_delta(name, regime)))
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(ArchConfig.field_names()))
    if unknown:
        raise LadderError(f"unknown builder field(s) {unknown}; valid fields: {ArchConfig.field_names()}")
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ArchConfig(**merged)
    except ArchConfigError as error:
        raise LadderError(f"rung {regime}/{step}: {error}") from error


def changed_fields(step: str, regime: str = "r50") -> dict[str, Any]:
    """What `step` itself sets (its delta), for tables; the baseline's full arch for the baseline."""
    spec = load_regime(regime)
    if step == spec.baseline:
        return dict(OmegaConf.to_container(spec.arch))
    step_chain(step, regime)  # validates the name
    return dict(OmegaConf.to_container(load_delta(step, regime)))
