"""`RoadmapNet`: stem → 4 stages → head, built from one `ArchConfig`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from roadmap.model.config import ArchConfig
from roadmap.model.layers import STEMS, Block, Downsample, Head, Stage


def build_net(**fields: Any) -> RoadmapNet:
    """The builder as a model factory (`model._target_` of the roadmap regimes): ArchConfig fields in."""
    return RoadmapNet(ArchConfig(**fields))


class RoadmapNet(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        widths, outs = cfg.stage_widths(), cfg.block_out_widths()
        self.stem = STEMS[cfg.stem](widths[0], cfg)
        total = sum(cfg.depths)
        drop_rates = [cfg.drop_path * i / max(total - 1, 1) for i in range(total)]  # linear, 0 first

        stages, in_channels, block_index = [], widths[0], 0
        for i, (depth, width, out) in enumerate(zip(cfg.depths, widths, outs)):
            downsample: nn.Module = nn.Identity()
            stride = 1 if i == 0 else 2
            if cfg.separate_downsampling and i > 0:
                downsample, in_channels, stride = Downsample(in_channels, out, cfg.norm), out, 1
            blocks = []
            for j in range(depth):
                blocks.append(Block(in_channels, width, stride if j == 0 else 1, drop_rates[block_index], cfg))
                in_channels, block_index = out, block_index + 1
            stages.append(Stage(downsample, blocks))
        self.stages = nn.Sequential(*stages)
        self.head = Head(in_channels, cfg)
        init_weights(self, cfg.init, cfg.head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's hook for layer-wise lr decay (`param_groups_layer_decay`): a parameter's name → its
        layer, the official ConvNeXt grouping (`roadmap.finetune.layer_id`) on any rung."""
        from roadmap.finetune import group_matcher

        return group_matcher(self.cfg.depths)


def init_weights(model: RoadmapNet, init: str, head_init_scale: float = 1.0) -> None:
    """Re-initialize convs and Linears (see `ArchConfig.init`); norms keep weight 1, bias 0."""
    for module in model.modules():
        is_head = module is model.head.fc
        if isinstance(module, (nn.Conv2d, nn.Linear)) and (init == "trunc_normal" or is_head):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    with torch.no_grad():
        model.head.fc.weight.mul_(head_init_scale)
        model.head.fc.bias.mul_(head_init_scale)
