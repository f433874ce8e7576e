"""UperNet on a rung (roadmap.model.segmentation): smp's UPerNetDecoder wired as mmseg's UPerHead, the
FCN auxiliary head on stage 3, logits at strides 4 and 16, a training step on a BatchNorm and a
LayerNorm rung, frozen BatchNorm in the backbone only."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import roadmap
from roadmap.model.segmentation import AUX_LOSS_WEIGHT, FCNHead, segmentation_loss, upernet, upsample


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("step", ["resnet50", "separate_downsampling"])
def test_upernet_on_a_rung_trains_and_predicts(step: str) -> None:
    """Logits at stride 4 (aux at 16) with num_classes channels; cross-entropy + 0.4 x aux on logits
    upsampled to the labels is finite and its gradients reach the stem; eval gives "out" only."""
    torch.manual_seed(0)
    net = roadmap.build_model(step, width_mult=0.25)
    model = upernet(net, num_classes=5, decoder_channels=32, aux_channels=16).train()
    images = torch.randn(2, 3, 64, 96)
    labels = torch.randint(0, 5, (2, 64, 96))
    labels[:, :8] = 255  # unlabelled rows
    outputs = model(images)
    assert set(outputs) == {"out", "aux"}
    assert outputs["out"].shape == (2, 5, 16, 24) and outputs["aux"].shape == (2, 5, 4, 6)
    loss = segmentation_loss(outputs, labels)
    assert torch.isfinite(loss) and AUX_LOSS_WEIGHT == 0.4
    loss.backward()
    stem_grad = next(p for p in net.stem.parameters() if p.requires_grad).grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.aux_head.parameters())
    with torch.no_grad():
        predicted = model.eval()(images)
    assert set(predicted) == {"out"} and upsample(predicted["out"], images.shape[-2:]).shape == (2, 5, 64, 96)


def test_segmentation_loss_upsamples_to_the_labels_and_weighs_the_aux_head() -> None:
    out, aux = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 1, 1)
    labels = torch.randint(0, 3, (1, 16, 16))
    labels[0, 0, 0] = 255
    main = nn.functional.cross_entropy(upsample(out, (16, 16)), labels, ignore_index=255)
    side = nn.functional.cross_entropy(aux.expand(1, 3, 16, 16), labels, ignore_index=255)
    torch.testing.assert_close(segmentation_loss({"out": out}, labels), main)
    torch.testing.assert_close(segmentation_loss({"out": out, "aux": aux}, labels), main + 0.4 * side)


def test_convnext_tiny_upernet_is_mmsegs_uperhead_and_fcnhead_by_structure() -> None:
    """ConvNeXt-T, ADE20K's 150 classes, defaults: the decoder and classifier have exactly the
    parameters of mmseg's UPerHead (channels 512; ConvModule = conv without bias + BN), layer by
    layer, the auxiliary head those of its FCNHead (256 channels); 60M parameters in all and 939 GMACs
    at 2048 x 512 (inference), the paper's figures."""
    model = upernet(roadmap.build_model("convnext_tiny"), num_classes=150)
    c, width, k = [96, 192, 384, 768], 512, 150
    ppm = 4 * (c[3] * width + 2 * width)  # pool scales 1, 2, 3, 6: 1x1 ConvModules on the last level
    psp_bottleneck = (c[3] + 4 * width) * width * 9 + 2 * width
    laterals = sum(c[:3]) * width + 3 * 2 * width
    fpn_convs = 3 * (width * width * 9 + 2 * width)
    fpn_bottleneck = 4 * width * width * 9 + 2 * width
    conv_seg = width * k + k
    assert count(model.decoder) + count(model.classifier) == (
        ppm + psp_bottleneck + laterals + fpn_convs + fpn_bottleneck + conv_seg)
    assert count(model.aux_head) == c[2] * 256 * 9 + 2 * 256 + 256 * k + k
    assert round(count(model) / 1e6) == 60
    assert model.decoder_channels == 512 and model.num_classes == 150
    # The levels in mmseg's order: the last (stride 32) into the pyramid pooling, laterals from 16, 8, 4;
    # no second LayerNorm on them (the Backbone's are the official norm0…norm3).
    assert [b[1][0].in_channels for b in model.decoder.psp.blocks] == [768] * 4
    assert [b.conv_norm_relu[0].in_channels for b in model.decoder.fpn_lateral_blocks] == [384, 192, 96]
    assert all(isinstance(n, nn.Identity) for n in model.decoder.feature_norms)
    assert model.decoder.fusion_block[0].kernel_size == (3, 3)
    assert isinstance(model.classifier[0], nn.Dropout2d) and model.classifier[0].p == 0.1
    assert isinstance(model.aux_head, FCNHead) and model.aux_head[0].in_channels == 384
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval().to("meta")(torch.empty(1, 3, 512, 2048, device="meta"))
    assert abs(counter.get_total_flops() / 2e9 - 939) < 1  # 938.5: mmcv's count adds a little beyond conv + linear


def test_frozen_bn_freezes_the_backbone_not_the_heads() -> None:
    model = upernet(roadmap.build_model("resnet50", width_mult=0.25), num_classes=4, decoder_channels=16,
                    aux_channels=8, frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.decoder.modules())
    assert isinstance(model.aux_head[1], nn.BatchNorm2d)
    assert upernet(roadmap.build_model("resnet50", width_mult=0.25), 4, 16, aux_channels=0).aux_head is None
