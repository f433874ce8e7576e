"""The building blocks of every rung: norms, stems, the parametrized residual block, downsampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from roadmap.model.config import ArchConfig


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, separately at each spatial position.

    Not GroupNorm(1, C), which also normalizes over space. The permutes are views: on a
    channels_last tensor they cost nothing.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return LayerNorm2d(channels)


def make_activation(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.GELU()


class ResNetStem(nn.Sequential):
    """7x7 stride-2 conv → norm → activation → 3x3 stride-2 max pool (overall stride 4)."""

    def __init__(self, out_channels: int, cfg: ArchConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        self.norm = make_norm(cfg.norm, out_channels)
        self.act = make_activation(cfg.activation)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)


class PatchifyStem(nn.Sequential):
    """4x4 stride-4 conv with bias; a norm follows it only once downsampling is separate."""

    def __init__(self, out_channels: int, cfg: ArchConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 4, stride=4)
        self.norm = make_norm(cfg.norm, out_channels) if cfg.separate_downsampling else nn.Identity()


STEMS: dict[str, type[nn.Module]] = {"resnet": ResNetStem, "patchify": PatchifyStem}


class Shortcut(nn.Sequential):
    """Projection shortcut: 1x1 conv (no bias) + the block's norm type."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.norm = make_norm(norm, out_channels)


class Block(nn.Module):
    """The one residual block of every rung: three convs, each optionally followed by norm and
    activation, a shortcut, optional layer scale and stochastic depth.

    Spatial conv in the middle (ResNet):  1x1 → kxk (stride) → 1x1.
    Spatial conv at the top (ConvNeXt):   kxk depthwise on the input (stride) → 1x1 → 1x1.
    """

    def __init__(
        self, in_channels: int, stage_width: int, stride: int, drop_path: float, cfg: ArchConfig
    ) -> None:
        super().__init__()
        if cfg.block == "bottleneck":
            hidden, out = stage_width, stage_width * cfg.expansion
        else:
            hidden, out = stage_width * cfg.expansion, stage_width
        bias = cfg.norm == "layer"  # a conv followed by BatchNorm needs no bias

        def spatial(channels: int) -> nn.Conv2d:
            groups = channels if cfg.depthwise else 1
            k = cfg.kernel_size
            return nn.Conv2d(channels, channels, k, stride, padding=k // 2, groups=groups, bias=bias)

        if cfg.dwconv_position == "top":
            self.conv1 = spatial(in_channels)
            self.conv2 = nn.Conv2d(in_channels, hidden, 1, bias=bias)
            widths, spatial_index = (in_channels, hidden, out), 0
        else:
            self.conv1 = nn.Conv2d(in_channels, hidden, 1, bias=bias)
            self.conv2 = spatial(hidden)
            widths, spatial_index = (hidden, hidden, out), 1
        self.conv3 = nn.Conv2d(hidden, out, 1, bias=bias)

        norms = [
            make_norm(cfg.norm, w) if not cfg.fewer_norms or i == spatial_index else nn.Identity()
            for i, w in enumerate(widths)
        ]
        self.norm1, self.norm2, self.norm3 = norms
        # fewer_activations keeps only the activation between the two 1x1 convs (after conv2).
        self.act1 = nn.Identity() if cfg.fewer_activations else make_activation(cfg.activation)
        self.act2 = make_activation(cfg.activation)
        self.act_out = nn.Identity() if cfg.fewer_activations else make_activation(cfg.activation)

        needs_projection = stride != 1 or in_channels != out
        self.shortcut = Shortcut(in_channels, out, stride, cfg.norm) if needs_projection else nn.Identity()
        self.gamma = nn.Parameter(torch.full((out,), cfg.layer_scale)) if cfg.layer_scale > 0 else None
        self.drop_path = StochasticDepth(drop_path, "row")
        # With one norm per block (after the top depthwise conv), all that follows up to the residual add
        # is per pixel: run it on the channels-last view with the 1x1 convs as Linear layers, as
        # torchvision's and timm's ConvNeXt blocks do (one GEMM each, no layout conversions).
        self.pointwise_as_linear = cfg.fewer_norms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        y = self.act1(self.norm1(self.conv1(x)))
        if self.pointwise_as_linear:
            y = self._mlp_channels_last(y)
        else:
            y = self.norm3(self.conv3(self.act2(self.norm2(self.conv2(y)))))
        if self.gamma is not None:  # on the NCHW view, as torchvision's: fewer layout copies in backward
            y = y * self.gamma.view(1, -1, 1, 1)
        # In place on the residual branch (no backward needs its value), as torchvision's and timm's
        # blocks add: no new activation-sized tensor, and the sum keeps the branch's memory layout
        # (channels_last after a ConvNeXt block's permuted norm), the same bits as shortcut + y.
        y = self.drop_path(y)
        y += shortcut
        return self.act_out(y)

    def _mlp_channels_last(self, y: torch.Tensor) -> torch.Tensor:
        """conv2 → act2 → conv3 (norm2, norm3 are Identity) on the NHWC view: the same function as the
        NCHW path. The 1x1 convs keep their weights, so checkpoints, inits and conversions are
        unchanged; they run as `F.linear` on them."""
        y = F.linear(y.permute(0, 2, 3, 1), self.conv2.weight.flatten(1), self.conv2.bias)
        y = F.linear(self.act2(y), self.conv3.weight.flatten(1), self.conv3.bias)
        return y.permute(0, 3, 1, 2)


class Downsample(nn.Sequential):
    """Separate downsampling between stages: norm → 2x2 stride-2 conv (with bias)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 2, stride=2)


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[Block]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    """Global average pool → (norm, once downsampling is separate) → Linear."""

    def __init__(self, channels: int, cfg: ArchConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg.norm, channels) if cfg.separate_downsampling else nn.Identity()
        self.fc = nn.Linear(channels, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.mean((2, 3), keepdim=True))
        return self.fc(torch.flatten(x, 1))
