"""roadmap: ablation-roadmap experiments, starting with the ConvNeXt paper's ResNet-50 → ConvNeXt-T ladder.

Public API:
    list_steps(regime="r50", adopted_only=True) -> list[str]
    build_model(step, regime=None, *, deltas=None, **overrides) -> torch.nn.Module (the regime's factory)
    complexity(model, image_size=224) -> {"params": int, "gmacs": float}
    convert_state_dict(state_dict, step, regime=None, **overrides) -> dict

`regime=None`: r50, or the regime that names the step (`build_model("convnext_small")`: the
family regime, conf/regime/family.yaml).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from roadmap.ladder import LadderError, arch_config, compose_arch, list_steps, regime_of, rung_model
from roadmap.model import factory
from roadmap.model.complexity import complexity
from roadmap.model.config import ArchConfig, ArchConfigError
from roadmap.model.convert import ConversionError
from roadmap.model.convert import map_onto_model
from roadmap.model.net import RoadmapNet

__all__ = [
    "ArchConfig",
    "ArchConfigError",
    "ConversionError",
    "LadderError",
    "RoadmapNet",
    "build_model",
    "compose_arch",
    "complexity",
    "convert_state_dict",
    "list_steps",
]


def build_model(step: str | None = None, regime: str | None = None, *, deltas: Sequence[str] | None = None,
                **overrides: Any) -> nn.Module:
    """The rung `step` of `regime`: the baseline plus every step delta up to `step` (or the
    explicit `deltas` list), then `overrides` (ArchConfig fields: num_classes=10, layer_scale=1e-6, …;
    or the arguments of the regime's own factory, `model._target_`)."""
    model, rung = rung_model(step, regime_of(step, regime), overrides, deltas)  # composed once
    if not factory.is_builder(model):
        return factory.build(model)
    return RoadmapNet(arch_config(model, rung))


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], step: str, regime: str | None = None, **overrides: Any
) -> dict[str, torch.Tensor]:
    """Map a torchvision `resnet50` / `convnext_{tiny,small,base,large}` or timm `convnext_{tiny,small,
    base,large,xlarge}` state dict (any head: pass its `num_classes`; detected from its keys) onto the
    keys of rung `step`, ready for `build_model(step, regime, **overrides).load_state_dict(..., strict=True)`.
    The ConvNeXt models fit the family's rungs (`convnext_small`, …) and ConvNeXt-T/B the ladders' ends."""
    with torch.device("meta"):  # compose_arch: one line for a regime on another factory (no builder keys)
        model = RoadmapNet(compose_arch(step, regime_of(step, regime), overrides))
    return map_onto_model(state_dict, model)
