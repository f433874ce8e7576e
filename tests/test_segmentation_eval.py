"""Segmentation evaluation (roadmap.evaluation.segmentation): the confusion matrix's IoU / mIoU / aAcc on a
hand-computed case, and sliding-window and multi-scale/flip inference against whole-image inference."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from roadmap.evaluation.segmentation import (
    MS_RATIOS,
    SLIDE_CROP,
    SLIDE_STRIDE,
    ConfusionMatrix,
    segment,
    slide_logits,
    slide_windows,
)

# target and prediction of one 2x3 image, 3 classes; the last pixel is ignored (its prediction 2 must not count).
TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 2]])
# (target, pred) pairs counted: (0,0) (0,1) (1,1) (1,1) (2,0)
# matrix, rows = target, cols = prediction:
#   [[1, 1, 0],
#    [0, 2, 0],
#    [1, 0, 0]]
# IoU = diag / (row sum + col sum - diag):
#   class 0: 1 / (2 + 2 - 1) = 1/3;  class 1: 2 / (2 + 3 - 2) = 2/3;  class 2: 0 / (1 + 0 - 0) = 0
# mIoU = (1/3 + 2/3 + 0) / 3 = 1/3 -> 33.33%;  aAcc = 3 correct / 5 labelled -> 60%
EXPECTED_MATRIX = [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_confusion_matrix_hand_computed() -> None:
    metric = ConfusionMatrix(3)
    metric.update(PRED, TARGET)
    assert metric.matrix.dtype == torch.int64 and metric.matrix.tolist() == EXPECTED_MATRIX
    torch.testing.assert_close(metric.iou(), torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert metric.miou() == pytest.approx(100 / 3) and metric.accuracy() == pytest.approx(60.0)
    # A batch [B, H, W] counts as its images one by one; reset empties the matrix.
    metric.update(torch.stack([PRED, PRED]), torch.stack([TARGET, TARGET]))
    assert metric.matrix.tolist() == [[3 * v for v in row] for row in EXPECTED_MATRIX]
    assert metric.miou() == pytest.approx(100 / 3)
    metric.reset()
    assert metric.matrix.sum() == 0


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    # Class 3 is in neither target nor prediction (the ignored pixel's prediction changed to 3 too): NaN,
    # and mIoU stays the mean over classes 0..2. Class 2, in the target only, counts as IoU 0.
    metric = ConfusionMatrix(4)
    metric.update(torch.tensor([[0, 1, 1], [1, 0, 3]]), TARGET)
    iou = metric.iou()
    assert math.isnan(iou[3]) and iou[2] == 0
    assert metric.miou() == pytest.approx(100 / 3) and metric.accuracy() == pytest.approx(60.0)
    with pytest.raises(ValueError, match="target holds values outside 0..3"):
        metric.update(torch.zeros(2, 2, dtype=torch.int64), torch.tensor([[0, 4], [1, 255]]))


def test_slide_windows_by_hand() -> None:
    # 600 high, crop 512, stride 341: rows = (600 - 512 + 340) // 341 + 1 = 2; the second window (341..853)
    # is shifted back to end at 600. 300 wide (under the crop): one column, clipped to the image.
    assert slide_windows(600, 300, 512, 341) == [(0, 512, 0, 300), (88, 600, 0, 300)]
    assert slide_windows(512, 512, 512, 341) == [(0, 512, 0, 512)]


def pointwise_model(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, num_classes, 1).eval()


@pytest.mark.parametrize("size", [(20, 27), (32, 32), (33, 32), (70, 45), (97, 150)])
def test_slide_equals_whole_image_for_a_pointwise_model(size: tuple[int, int]) -> None:
    # Crop 32, stride 21: images smaller than, equal to and larger than the crop, not multiples of the stride.
    model, image = pointwise_model(), torch.randn(2, 3, *size)
    torch.testing.assert_close(slide_logits(model, image, 5, crop=32, stride=21), model(image))
    # Every pixel is covered by at least one crop-sized (or image-clipped) window.
    count = torch.zeros(size)
    for y1, y2, x1, x2 in slide_windows(*size, 32, 21):
        assert (y2 - y1, x2 - x1) == (min(32, size[0]), min(32, size[1]))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1


def test_slide_resizes_lower_resolution_logits_to_the_window() -> None:
    # A model that returns half-resolution logits: one window (the image fits the crop) gives the model's
    # output resized bilinearly to the image; a constant model stays constant through the averaging.
    model = nn.Sequential(nn.AvgPool2d(2), pointwise_model()).eval()
    image = torch.randn(1, 3, 30, 31)
    expected = F.interpolate(model(image), size=(30, 31), mode="bilinear", align_corners=False)
    torch.testing.assert_close(slide_logits(model, image, 5, crop=32, stride=21), expected)

    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 5, x.shape[2] // 4, x.shape[3] // 4)

    torch.testing.assert_close(slide_logits(constant, torch.randn(1, 3, 90, 71), 5, 32, 21), torch.ones(1, 5, 90, 71))


def test_segment_single_scale_and_flip() -> None:
    model, image = pointwise_model(), torch.randn(1, 3, 40, 57)
    out_size = (80, 114)
    plain = segment(model, image, out_size, 5, crop=32, stride=21)
    expected = F.interpolate(model(image), size=out_size, mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(plain, expected)
    # A pointwise model is flip-equivariant: the mirrored input's mirrored output is the same.
    torch.testing.assert_close(segment(model, image, out_size, 5, 32, 21, flip=True), plain)
    # The paper's multi-scale test: a probability map at out_size.
    probs = segment(model, image, out_size, 5, 32, 21, scales=MS_RATIOS, flip=True)
    assert probs.shape == (1, 5, *out_size)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, *out_size))
    assert (SLIDE_CROP, SLIDE_STRIDE, MS_RATIOS) == (512, 341, (0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
