"""The model factory a regime names: `model._target_` (Hydra's instantiate convention) is any
callable that returns an nn.Module from the other `model` keys. Roadmap's builder is the default;
a regime on another factory (e.g. conf/regime/bag_of_tricks.yaml, on timm) is YAML alone."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from roadmap.schema import LEGACY

if TYPE_CHECKING:
    from torch import nn

BUILDER: str = LEGACY["model._target_"]  # the default: ArchConfig fields in, a RoadmapNet out


class FactoryError(ValueError):
    """A model factory that cannot be found, or that refuses the rung's arguments (one line)."""


def target(model: Mapping[str, Any]) -> str:
    """The factory's dotted path (the builder when the block names none: config.yaml files written
    before regimes named their factory)."""
    return str(model.get("_target_") or BUILDER)


def is_builder(model: Mapping[str, Any]) -> bool:
    return target(model) == BUILDER


def arguments(model: Mapping[str, Any]) -> dict[str, Any]:
    """The factory's keyword arguments: the block without Hydra's `_…_` keys."""
    return {k: v for k, v in model.items() if not (k.startswith("_") and k.endswith("_"))}


def check(model: Mapping[str, Any]) -> None:
    """The factory can be imported (the arguments are checked by calling it: `build`)."""
    from hydra.utils import get_method

    try:
        get_method(target(model))
    except Exception as error:  # noqa: BLE001 - Hydra's ImportError/ValueError, with its reason
        cause = error.__cause__ or error
        raise FactoryError(f"model._target_={target(model)}: cannot import it ({type(cause).__name__}: "
                           f"{_first_line(cause)})") from error


def build(model: Mapping[str, Any]) -> nn.Module:
    """The factory called with the block's arguments (Hydra's instantiate: a nested `_target_` is
    built first); its refusal (e.g. an unknown keyword) is one line."""
    from hydra.utils import instantiate
    from torch import nn

    check(model)
    try:
        built = instantiate({**model, "_target_": target(model)}, _convert_="all")
    except Exception as error:  # noqa: BLE001 - any refusal of the arguments is reported the same way
        cause = error.__cause__ or error
        raise FactoryError(f"model._target_={target(model)} refused its arguments {sorted(arguments(model))}: "
                           f"{type(cause).__name__}: {_first_line(cause)}") from error
    if not isinstance(built, nn.Module):
        raise FactoryError(f"model._target_={target(model)} returned a {type(built).__name__}, not a torch nn.Module")
    return built


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
