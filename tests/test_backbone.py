"""A rung as a backbone (roadmap.model.backbone): four levels at strides 4-32, equal to timm's
`features_only` ConvNeXt-T on the same weights before the extra norms; frozen BatchNorm."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import roadmap
from roadmap.model.backbone import Backbone
from tests.conftest import randomize


def test_convnext_tiny_levels_equal_timms_features_only_before_the_extra_norms() -> None:
    reference = randomize(timm.create_model("convnext_tiny")).eval()
    full = reference.state_dict()
    features = timm.create_model("convnext_tiny", features_only=True).eval()
    features.load_state_dict({k.replace("stem.", "stem_", 1).replace("stages.", "stages_", 1): v
                              for k, v in full.items() if not k.startswith("head")})
    ours = roadmap.build_model("convnext_tiny")
    ours.load_state_dict(roadmap.convert_state_dict(full, "convnext_tiny"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = Backbone(ours.eval(), output_norms=False)(x)
        normed = Backbone(ours, output_norms=True)(x)
        expected = features(x)
    assert [f.shape[1] for f in expected] == [96, 192, 384, 768] == Backbone(ours).out_channels
    assert [64 // f.shape[-1] for f in plain.values()] == [4, 8, 16, 32]
    for got, want in zip(plain.values(), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The extra norms (the official backbone's norm0..norm3: LayerNorm over channels, weight 1, bias 0).
    for got, want in zip(normed.values(), expected):
        mean, var = want.mean(1, keepdim=True), want.var(1, unbiased=False, keepdim=True)
        torch.testing.assert_close(got, (want - mean) / torch.sqrt(var + 1e-6), rtol=1e-4, atol=1e-4)


def test_a_batchnorm_rung_gives_plain_levels_and_can_freeze_its_batchnorm() -> None:
    net = randomize(roadmap.build_model("resnet50", width_mult=0.25))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the rung in eval mode, before its BatchNorms are frozen (in place)
        expected = Backbone(net.eval(), out_indices=(1, 2, 3))(x)
    backbone = Backbone(net.train(), out_indices=(1, 2, 3), frozen_bn=True)
    assert backbone.out_channels == [128, 256, 512] and backbone.strides == [8, 16, 32]
    assert all(isinstance(n, nn.Identity) for n in backbone.norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    with torch.no_grad():
        levels = backbone(x)  # in train mode: frozen statistics, as the eval-mode rung's
    assert list(levels) == ["0", "1", "2"] and [v.shape[-1] for v in levels.values()] == [8, 4, 2]
    for got, want in zip(levels.values(), expected.values()):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="out_indices"):
        Backbone(net, out_indices=(4,))


@pytest.mark.parametrize("step", ["resnet50", "separate_downsampling"])
def test_mask_rcnn_on_a_rung_trains_and_predicts(step: str) -> None:
    """torchvision's Mask R-CNN and FPN on a BatchNorm and a LayerNorm rung: finite losses whose
    gradients reach the rung's stem, then detections in eval mode."""
    from roadmap.model.detection import mask_rcnn

    torch.manual_seed(0)
    net = roadmap.build_model(step, width_mult=0.25)
    model = mask_rcnn(net, num_classes=3, fpn_channels=32, frozen_bn=step == "resnet50", min_size=96, max_size=96)
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 96)]
    masks = torch.zeros(1, 96, 96, dtype=torch.uint8)
    masks[0, 20:60, 10:50] = 1
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]), "labels": torch.tensor([1]), "masks": masks},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([2]),
                "masks": masks[:, :80]}]
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    stem_grad = next(p for p in net.stem.parameters() if p.requires_grad).grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "labels", "scores", "masks"}
