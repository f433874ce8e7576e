"""Detection and instance segmentation on a rung: torchvision's Mask R-CNN and FeaturePyramidNetwork
on `roadmap.model.backbone.Backbone` (no hand-written detector). Cascade Mask R-CNN, which the paper
also reports, is not in torchvision and is not written here."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from roadmap.finetune import layer_id
from roadmap.model.backbone import Backbone
from roadmap.model.net import RoadmapNet


class FPNBackbone(nn.Module):
    """The rung's four levels through an FPN (`fpn_channels` each, plus a max-pooled fifth level), as
    torchvision's detectors take a backbone: a module with `out_channels`."""

    def __init__(self, body: Backbone, fpn_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


class RungMaskRCNN(MaskRCNN):
    """torchvision's MaskRCNN, plus the official detection code's layer-wise lr decay grouping: the
    backbone's parameters by the rung's layers (`roadmap.finetune.layer_id`), the FPN and heads last."""

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        return backbone_group_matcher(self.backbone.body.depths, "backbone.body.")


def backbone_group_matcher(depths: list[int], prefix: str) -> Callable[[str], int]:
    """A parameter name -> its layer for timm's layer-decay groups: the backbone's (under `prefix`) by
    `layer_id`, every other parameter (neck, heads) after the backbone's last layer."""
    head = layer_id("head", depths)
    return lambda name: layer_id(name.removeprefix(prefix), depths) if name.startswith(prefix) else head


def mask_rcnn(net: RoadmapNet, num_classes: int, fpn_channels: int = 256, frozen_bn: bool = False,
              **options: Any) -> RungMaskRCNN:
    """torchvision's Mask R-CNN on rung `net` (its weights, e.g. from `init_from`, as they are):
    `num_classes` with the background (COCO: 91), `options` to MaskRCNN (min_size, max_size, …)."""
    return RungMaskRCNN(FPNBackbone(Backbone(net, frozen_bn=frozen_bn), fpn_channels), num_classes=num_classes,
                        **options)
