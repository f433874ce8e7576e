"""Semantic segmentation on a rung: UperNet as in the ConvNeXt paper's ADE20K setting (mmseg's
`UPerHead`, 512 channels, on the four levels, and an `FCNHead` auxiliary head on stage 3 whose loss
counts 0.4). The decoder is segmentation-models-pytorch's `UPerNetDecoder` (no hand-written UPerHead);
the classifier, the auxiliary head and the loss are the few lines written here.

Logits come out at their heads' strides (main 4, auxiliary 16), as mmseg's heads give them; the loss
upsamples them to the labels' size (`upsample`, bilinear, align_corners=False), as mmseg does, and a
prediction upsamples them to the image's size the same way."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn

from roadmap.data.ade20k import (
    IGNORE_INDEX,  # unlabelled pixels (reduce_zero_label, the crops' padding)
)
from roadmap.model.backbone import Backbone
from roadmap.model.detection import backbone_group_matcher
from roadmap.model.net import RoadmapNet

AUX_LOSS_WEIGHT = 0.4  # the FCN auxiliary head's loss weight (mmseg's ConvNeXt UperNet configs)


class FCNHead(nn.Sequential):
    """mmseg's FCNHead with num_convs=1, concat_input=False: 3x3 conv + BN + ReLU, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1),
        )


class UperNet(nn.Module):
    """UperNet on `backbone` (a module giving four levels at strides 4-32 as an ordered dict, with
    `out_channels`: `roadmap.model.backbone.Backbone`). forward → {"out": logits at stride 4} in eval,
    plus {"aux": the auxiliary head's logits at stride 16} in training (`aux_channels=0`: no auxiliary head).
    Training takes >= 2 images per BatchNorm (the pyramid pooling's 1x1 level is batch-normalized)."""

    out_stride, aux_stride = 4, 16

    def __init__(self, backbone: nn.Module, num_classes: int, decoder_channels: int = 512, aux_channels: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        channels = list(backbone.out_channels)
        if len(channels) != 4:
            raise ValueError(f"UperNet takes four levels (strides 4, 8, 16, 32), got {len(channels)}")
        self.backbone = backbone
        self.num_classes, self.decoder_channels = num_classes, decoder_channels
        # smp's decoder takes an smp encoder's depth + 1 features ([input, 1/2, 1/4, …, 1/32] at depth 5)
        # and drops the first two: our levels start at 1/4, so two placeholders stand before them.
        self.decoder = UPerNetDecoder([0, 0, *channels], encoder_depth=5, decoder_channels=decoder_channels,
                                      use_norm="batchnorm")
        # Its LayerNorm per level is not in mmseg's UPerHead; a LayerNorm rung's Backbone has its own.
        self.decoder.feature_norms = nn.ModuleList(nn.Identity() for _ in channels)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(decoder_channels, num_classes, 1))
        self.aux_head = FCNHead(channels[2], aux_channels, num_classes, dropout) if aux_channels else None
        heads = [self.decoder, self.classifier] + ([self.aux_head] if self.aux_head is not None else [])
        for head in heads:
            init_head(head)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """Layer-wise lr decay as the official segmentation code: the rung's layers, then the heads."""
        return backbone_group_matcher(self.backbone.depths, "backbone.")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        levels = list(self.backbone(x).values())
        out = {"out": self.classifier(self.decoder([None, None, *levels]))}
        if self.training and self.aux_head is not None:
            out["aux"] = self.aux_head(levels[2])
        return out


def upernet(net: RoadmapNet, num_classes: int, decoder_channels: int = 512, aux_channels: int = 256,
            frozen_bn: bool = False, dropout: float = 0.1) -> UperNet:
    """UperNet on rung `net` (its weights as they are; ADE20K: 150 classes); `frozen_bn` freezes the
    rung's BatchNorms only (the heads' train: SyncBN across GPUs is the trainer's conversion)."""
    return UperNet(Backbone(net, frozen_bn=frozen_bn), num_classes, decoder_channels, aux_channels, dropout)


def init_head(module: nn.Module) -> None:
    """mmseg's init: its ConvModules' convs Kaiming normal (fan_out, ReLU), BatchNorm 1 / 0, the 1x1
    classifiers (the convs with a bias here) normal with std 0.01, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def upsample(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """`logits` resized to `size` (H, W), bilinear with align_corners=False, as mmseg resizes them."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def segmentation_loss(outputs: dict[str, torch.Tensor] | OrderedDict[str, torch.Tensor], labels: torch.Tensor,
                      aux_weight: float = AUX_LOSS_WEIGHT, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of "out", plus `aux_weight` x that of "aux" when present, each on logits upsampled
    to the labels' size ([B, H, W] class indices), pixels labelled `ignore_index` left out of the mean
    (mmseg's avg_non_ignore=True; the paper's mmseg 0.x divided by all pixels, ignored ones included)."""
    size = labels.shape[-2:]
    loss = F.cross_entropy(upsample(outputs["out"], size), labels, ignore_index=ignore_index)
    if "aux" in outputs:
        loss = loss + aux_weight * F.cross_entropy(upsample(outputs["aux"], size), labels, ignore_index=ignore_index)
    return loss
