"""Detection and instance segmentation on a rung: torchvision's Mask R-CNN and FeaturePyramidNetwork
on `roadmap.model.backbone.Backbone` (no hand-written detector). Cascade Mask R-CNN, which the paper
also reports, is not in torchvision and is not written here."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

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


def mask_rcnn(net: RoadmapNet, num_classes: int, fpn_channels: int = 256, frozen_bn: bool = False,
              **options: Any) -> MaskRCNN:
    """torchvision's Mask R-CNN on rung `net` (its weights, e.g. from `init_from`, as they are):
    `num_classes` with the background (COCO: 91), `options` to MaskRCNN (min_size, max_size, …)."""
    return MaskRCNN(FPNBackbone(Backbone(net, frozen_bn=frozen_bn), fpn_channels), num_classes=num_classes, **options)
