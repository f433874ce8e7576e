"""roadmap: ablation-roadmap experiments, starting with the ConvNeXt paper's ResNet-50 → ConvNeXt-T ladder.

Public API:
    list_steps(regime="r50", adopted_only=True) -> list[str]
    build_model(step, regime="r50", *, deltas=None, **overrides) -> torch.nn.Module (the regime's factory)
    complexity(model, image_size=224) -> {"params": int, "gmacs": float}
    convert_state_dict(state_dict, step, regime="r50", **overrides) -> dict
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from roadmap.ladder import LadderError, arch_config, compose_arch, list_steps, rung_model
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


def build_model(step: str | None = None, regime: str = "r50", *, deltas: Sequence[str] | None = None,
                **overrides: Any) -> nn.Module:
    """The rung `step` of `regime`: the baseline plus every step delta up to `step` (or the
    explicit `deltas` list), then `overrides` (ArchConfig fields: num_classes=10, layer_scale=1e-6, …;
    or the arguments of the regime's own factory, `model._target_`)."""
    model, rung = rung_model(step, regime, overrides, deltas)  # composed once
    if not factory.is_builder(model):
        return factory.build(model)
    return RoadmapNet(arch_config(model, rung))


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], step: str, regime: str = "r50", **overrides: Any
) -> dict[str, torch.Tensor]:
    """Map a torchvision `resnet50` / `convnext_tiny` / `convnext_base` or timm `convnext_tiny` /
    `convnext_base` state dict (detected from its keys) onto the keys of rung `step`, ready for
    `build_model(step, regime, **overrides).load_state_dict(..., strict=True)`."""
    with torch.device("meta"):  # compose_arch: one line for a regime on another factory (no builder keys)
        model = RoadmapNet(compose_arch(step, regime, overrides))
    return map_onto_model(state_dict, model)
