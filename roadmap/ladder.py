"""The ladder: a regime's steps, and how Hydra composes a rung from them.

A regime (conf/regime/<name>.yaml) sets `regime` (its baseline's name, its steps in order, the
branches tried and not adopted) and `model` (the baseline's builder fields). A step
(conf/steps/<step>.yaml, or conf/steps/<regime>/<step>.yaml for a regime's own version) is a Hydra
config over the whole run config: it may set `model.*`, `recipe.*`, `data.*`. A rung is the
baseline with a list of deltas applied in order: by default the chain of adopted steps up to
`step` (a branch: the rung it branches off, then itself), or an explicit `deltas` list.

Hydra composes the rung in two passes (`compose_run`, and `with_rung_overrides` for a command
line): the command line first, which names the regime and the rung; then again with the rung's
deltas appended as the `steps` group list, so that every later key of the command line still wins.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from roadmap import schema
from roadmap.model import factory
from roadmap.model.config import ArchConfig, ArchConfigError
from roadmap import rundir  # noqa: F401 - registers the run_dir / experiment_dir resolvers the configs use


def per_model(step: str, values: Mapping[str, Any], *default: Any, _node_: Any = None) -> Any:
    """The `${per_model:${step},{convnext_tiny: 0.1, …}[,default]}` resolver: a recipe value that depends
    on the model (the family recipes' drop path), the one for rung `step`, else `default`; a rung with
    neither is one line naming the key, the step and the models it has values for."""
    if step in values:
        return values[step]
    if default:
        return default[0]
    key = _node_._get_full_key(None) if _node_ is not None else "the value"
    raise schema.ConfigError(f"{key} has a value per model ({', '.join(values)}), none for step={step}: "
                             f"set {key}=<value> on the command line")


if not OmegaConf.has_resolver("per_model"):
    OmegaConf.register_new_resolver("per_model", per_model)


class LadderError(ValueError):
    """An unknown regime, step or delta, or a bad builder field or override."""


def conf_dir() -> Path:
    """The Hydra config folder: `roadmap/conf` in an installed wheel, `conf/` in a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no roadmap config folder (train.yaml) beside {package}")


@contextlib.contextmanager
def hydra_context() -> Iterator[None]:
    """Hydra's compose API over conf/: inside a Hydra app it is there already, else set up here."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        yield


def list_regimes() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "regime").glob("*.yaml"))


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Hydra's compose; a bad override is one LadderError line naming it."""
    try:
        with hydra_context():
            return compose(config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise LadderError(_unknown_key(error) or one_line(error)) from error


def _unknown_key(error: BaseException) -> str | None:
    """The schema's line for an override of a key that nothing reads, instead of Hydra's advice to
    add it with `+` (which would only put a dead key into the config and its hash); None for any
    other error, and for a key that `+` rightly adds (a schema key left unset, a model argument)."""
    cause = error.__cause__
    key = getattr(cause, "full_key", None)
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or "not in struct" not in str(cause) or not key:
        return None
    if key in schema.KEYS or key.split(".")[0] in schema.BLOCKS:
        return None
    return schema.unknown_key(key)


def one_line(error: BaseException) -> str:
    """Hydra's multi-line message and its cause (e.g. "Key 'arch' is not in struct") as one line."""
    message = str(error).split("Config search path")[0]
    if error.__cause__ is not None:
        message += "\n" + str(error.__cause__).splitlines()[0]
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


@lru_cache(maxsize=None)
def _ladder(regime: str, deltas: tuple[str, ...]) -> DictConfig:
    if regime not in list_regimes():
        raise LadderError(f"regime={regime!r} is unknown; valid regimes: {list_regimes()}")
    cfg = _compose("ladder", [f"regime={regime}"])
    if deltas:
        cfg = _compose("ladder", [f"regime={regime}", steps_override(cfg.regime, deltas)])
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_regime(regime: str) -> DictConfig:
    """The composed `regime` block of a regime (its baseline, steps and branches)."""
    return _ladder(regime, ()).regime


def list_steps(regime: str | DictConfig = "r50", adopted_only: bool = True) -> list[str]:
    """Rung names in the paper's order, the baseline first; `adopted_only=False` also lists the
    branches that were tried and not adopted (kernel_5, kernel_9, kernel_11)."""
    spec = load_regime(regime) if isinstance(regime, str) else regime
    return [spec.baseline, *(s for s in spec.steps if adopted_only is False or s not in spec.branches)]


def step_chain(step: str, regime: str | DictConfig = "r50") -> list[str]:
    """The deltas that make `step`, in order (empty for the baseline)."""
    spec = load_regime(regime) if isinstance(regime, str) else regime
    if step == spec.baseline:
        return []
    if step in spec.branches:
        return [*step_chain(spec.branches[step], spec), step]
    adopted = list_steps(spec)[1:]
    if step in adopted:
        return adopted[: adopted.index(step) + 1]
    home = regime_of(step)  # the regime that names the step, else r50
    hint = f" (it is one of regime {home!r}: add regime={home})" if step in list_steps(home, adopted_only=False) else ""
    raise LadderError(f"step={step!r} is not a step of regime {spec.name!r}{hint}; "
                      f"valid steps: {list_steps(spec, adopted_only=False)}")


def regime_of(step: str | None, regime: str | None = None) -> str:
    """The regime a rung is looked up in: `regime` when given; else r50, or the first other regime
    that names `step` (`convnext_small`: the family). An unknown step falls to r50, whose error
    lists its steps."""
    if regime is not None:
        return regime
    for name in ["r50", *(r for r in list_regimes() if r != "r50")]:
        if step is None or step in list_steps(name, adopted_only=False):
            return name
    return "r50"


def known_regime(regime: str) -> bool:
    """Whether conf/regime/ configures `regime` (results may name one that is no longer configured)."""
    try:
        load_regime(regime)
    except LadderError:
        return False
    return True


def ladder_order(regime: str, step: str) -> int:
    """The rung's position in its regime's ladder (the baseline 0); 10 000 off the ladder."""
    try:
        return list_steps(regime, adopted_only=False).index(step)
    except (ValueError, LadderError):
        return 10_000


def check_deltas(deltas: Sequence[str], regime: DictConfig) -> list[str]:
    deltas = [str(d) for d in deltas]
    unknown = [d for d in deltas if d not in regime.steps]
    if unknown:
        raise LadderError(f"deltas={deltas}: {unknown} are not deltas of regime {regime.name!r}; "
                          f"valid deltas: {list(regime.steps)}")
    if len(set(deltas)) != len(deltas):
        raise LadderError(f"deltas={deltas} lists a delta twice")
    return deltas


def rung_name(deltas: Sequence[str], regime: DictConfig) -> str:
    """A delta list's readable, deterministic name: the step whose chain it is, `<step>_without_<x>`
    for that chain with one delta taken out, else the deltas joined by `+` (the baseline if none)."""
    deltas = list(deltas)
    if not deltas:
        return str(regime.baseline)
    chain = step_chain(deltas[-1], regime)
    if chain == deltas:
        return deltas[-1]
    missing = [d for d in chain if d not in deltas]
    if len(missing) == 1 and [d for d in chain if d in deltas] == deltas:
        return f"{deltas[-1]}_without_{missing[0]}"
    return "+".join(deltas)


def steps_override(regime: DictConfig, deltas: Sequence[str]) -> str:
    """The Hydra override that appends the deltas' config files (a regime's own version first)."""
    options = [f"{regime.name}/{d}" if (conf_dir() / "steps" / str(regime.name) / f"{d}.yaml").is_file() else d
               for d in deltas]
    return f"+steps=[{','.join(options)}]"


def rung_deltas(cfg: DictConfig) -> list[str]:
    """The deltas of the rung a (first-pass) run config names: `deltas`, or the chain to `step`."""
    if cfg.get("deltas") is not None:
        return check_deltas(cfg.deltas, cfg.regime)
    return [] if cfg.step is None else step_chain(cfg.step, cfg.regime)  # None: roadmap.inspect's table


def rung_overrides(cfg: DictConfig) -> list[str]:
    """What the second pass adds to the command line: the deltas, and the rung's name for a list."""
    deltas = rung_deltas(cfg)
    extra = [steps_override(cfg.regime, deltas)] if deltas else []
    if cfg.get("deltas") is not None:
        extra.append(f"step={rung_name(deltas, cfg.regime)}")
    return extra


def _with_deltas(overrides: Sequence[str], config_name: str) -> tuple[list[str], bool]:
    """(the second pass's extra overrides, whether `overrides` carry them already). The `steps`
    group is written by the first pass only: given by hand, it must be what the rung names."""
    given = [o for o in overrides if o.lstrip("+").startswith("steps=")]
    extra = rung_overrides(_compose(config_name, [o for o in overrides if o not in given]))
    if given and given != [o for o in extra if o.startswith("+steps=")]:
        raise LadderError(f"{given[0]}: a rung's deltas are chosen by step=<name> or deltas=[…], not by the "
                          f"steps group (this rung's: {extra[0] if extra else 'none'})")
    return extra, bool(given)


def compose_run(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """The run config of a rung, composed by Hydra with its deltas (see the module docstring)."""
    extra, given = _with_deltas(overrides, config_name)
    return _compose(config_name, list(overrides) if given else [*overrides, *extra])


def with_rung_overrides(argv: Sequence[str], config_name: str = "train") -> list[str]:
    """A command line with the rung's deltas added (for `hydra.main`, so that `--cfg job` and the
    run see the composed rung); unchanged when it has them already (a DDP rank re-running it)."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv[1:]))
    if args.help or args.hydra_help:
        return list(argv)
    extra, given = _with_deltas(args.overrides, config_name)
    if given:
        return list(argv)
    at = max((i for i, a in enumerate(argv) if a in args.overrides), default=0) + 1  # before any --option
    return [*argv[:at], *extra, *argv[at:]]


def rung_argv(prog: str, config_name: str) -> list[str]:
    """sys.argv with the rung's deltas added; a bad override or rung ends the process with one
    line (exit 2), before anything is written."""
    import sys

    try:
        return with_rung_overrides(sys.argv, config_name)
    except LadderError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def rung_model(step: str | None, regime: str, overrides: Mapping[str, Any] | None,
                deltas: Sequence[str] | None) -> tuple[dict[str, Any], str]:
    """`compose_model`'s block and the rung's name for messages (the step, or the delta list's name)."""
    spec = load_regime(regime)
    chain = check_deltas(deltas, spec) if deltas is not None else step_chain(step or spec.baseline, spec)
    fields = OmegaConf.to_container(_ladder(regime, tuple(chain)).model, resolve=True)
    name = step if deltas is None else rung_name(chain, spec)
    return {**fields, **{k: v for k, v in dict(overrides or {}).items() if v is not None}}, f"rung {regime}/{name}"


def compose_model(step: str | None = None, regime: str | None = None, overrides: Mapping[str, Any] | None = None,
                  deltas: Sequence[str] | None = None) -> dict[str, Any]:
    """The rung's `model` block, resolved: baseline ⊕ deltas (the chain to `step`, or `deltas`) ⊕
    `overrides` (None values skipped), composed from the same files as a run (`ladder.yaml` gives
    what a run's recipe and data would: 1000 classes, no layer scale or drop path). `regime=None`:
    `regime_of(step)`."""
    return rung_model(step, regime_of(step, regime), overrides, deltas)[0]


def compose_arch(step: str | None = None, regime: str | None = None, overrides: Mapping[str, Any] | None = None,
                 deltas: Sequence[str] | None = None) -> ArchConfig:
    """The rung's ArchConfig (`compose_model`'s block); a regime on another factory is refused."""
    return arch_config(*rung_model(step, regime_of(step, regime), overrides, deltas))


def check_rung(step: str | None = None, regime: str = "r50", deltas: Sequence[str] | None = None) -> None:
    """The builder's reason a rung cannot be built (LadderError); another factory's rungs are
    checked when they are built."""
    model, rung = rung_model(step, regime, None, deltas)
    if factory.is_builder(model):
        arch_config(model, rung)


def arch_config(model: Mapping[str, Any], rung: str) -> ArchConfig:
    """ArchConfig from a composed `model` block, with one line naming what is wrong."""
    if not factory.is_builder(model):
        raise LadderError(f"{rung}: its model is built by {factory.target(model)}, not by roadmap's builder "
                          f"({factory.BUILDER}): it has no ArchConfig")
    fields = factory.arguments(model)
    unknown = sorted(set(fields) - set(ArchConfig.field_names()))
    if unknown:
        raise LadderError(f"{rung}: unknown builder field(s) {unknown}; valid fields: {ArchConfig.field_names()}")
    try:
        return ArchConfig(**fields)
    except ArchConfigError as error:
        raise LadderError(f"{rung}: {error}") from error


def changed_fields(step: str, regime: str = "r50") -> dict[str, Any]:
    """What `step` itself sets (its delta, as dotted keys), for tables; the baseline's arch for the baseline."""
    spec = load_regime(regime)
    base = _ladder(regime, ())
    if step == spec.baseline:  # what the regime sets itself: not its factory, nor what the recipe and data give
        return {k: v for k, v in factory.arguments(OmegaConf.to_container(base.model)).items()
                if not OmegaConf.is_interpolation(base.model, k)}
    step_chain(step, spec)  # validates the name
    before, after = _flat(base), _flat(_ladder(regime, (step,)))
    return {k.removeprefix("model."): v for k, v in after.items() if before.get(k, ...) != v}


def _flat(cfg: DictConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg), "")
    return flat

