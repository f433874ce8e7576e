"""Any rung (or family model) as a detection / segmentation backbone: its four stage outputs at strides
4, 8, 16 and 32, as torchvision's detection heads take them (an ordered dict, `out_channels` per
level). A LayerNorm model gets one LayerNorm per output level, as the official ConvNeXt backbone
(`norm0`…`norm3`, which the classifier does not have); a BatchNorm rung gives its plain stage outputs,
optionally with every BatchNorm frozen (its statistics and affine fixed), as torchvision's detection
backbones freeze theirs."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from roadmap.model.layers import make_norm
from roadmap.model.net import RoadmapNet


class Backbone(nn.Module):
    """`net`'s stem and stages (shared, not copied) → {"0": stride 4, …, "3": stride 32} for `out_indices`.
    `output_norms`: a LayerNorm on each output (default: when the rung's norm is LayerNorm)."""

    def __init__(self, net: RoadmapNet, out_indices: Sequence[int] = (0, 1, 2, 3), output_norms: bool | None = None,
                 frozen_bn: bool = False) -> None:
        super().__init__()
        if not out_indices or any(i not in range(len(net.stages)) for i in out_indices):
            raise ValueError(f"out_indices={list(out_indices)}: stage indices in 0..{len(net.stages) - 1}")
        self.stem, self.stages = net.stem, net.stages[: max(out_indices) + 1]
        self.out_indices = tuple(out_indices)
        self.depths = list(net.cfg.depths)  # the rung's stages, for layer-wise lr decay
        self.out_channels = [net.cfg.block_out_widths()[i] for i in self.out_indices]
        self.strides = [4 * 2**i for i in self.out_indices]
        norms = net.cfg.norm == "layer" if output_norms is None else output_norms
        self.norms = nn.ModuleList(make_norm("layer", c) if norms else nn.Identity() for c in self.out_channels)
        if frozen_bn:
            freeze_batchnorm(self)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x, features = self.stem(x), OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                level = self.out_indices.index(i)
                features[str(level)] = self.norms[level](x)
        return features


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d under `module` replaced, in place, by torchvision's FrozenBatchNorm2d with its
    statistics and affine parameters (buffers: no gradient, no update)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module
