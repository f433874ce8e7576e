"""Semantic-segmentation evaluation as mmsegmentation 0.x does it: a confusion matrix for IoU, mIoU and
aAcc (percent, ignore_index left out), sliding-window inference (`slide_logits`, mmseg's slide_inference)
and its multi-scale + flip test (`segment`, mmseg's aug_test: softmax per augmentation, averaged)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

# The ConvNeXt paper's UperNet/ADE20K evaluation (mmseg's test_cfg): single-scale sliding windows of
# 512 with stride 341, and the multi-scale test over these ratios of the eval scale, with flip.
SLIDE_CROP = 512
SLIDE_STRIDE = 341
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
MS_FLIP = True

Model = Callable[[torch.Tensor], torch.Tensor]


class ConfusionMatrix:
    """Pixel counts over a dataset: `matrix[t, p]` = pixels of target class t predicted p (int64 [C, C]);
    pixels whose target is ignore_index are left out. DDP callers all_reduce `matrix` before reading."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count `pred` against `target`: integer class maps of one shape ([B, H, W] or [H, W])."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        keep = target != self.ignore_index
        pred, target = pred[keep].long(), target[keep].long()
        for name, values in (("pred", pred), ("target", target)):
            if values.numel() and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(f"{name} holds values outside 0..{self.num_classes - 1} "
                                 f"(min {int(values.min())}, max {int(values.max())}; ignore_index={self.ignore_index})")
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes ** 2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).to(self.matrix.device)

    def iou(self) -> torch.Tensor:
        """Per-class IoU as a fraction (float64 [C]); NaN for a class in neither target nor prediction."""
        matrix = self.matrix.double()
        intersection = matrix.diagonal()
        return intersection / (matrix.sum(0) + matrix.sum(1) - intersection)

    def miou(self) -> float:
        """Mean IoU over the classes present (NaN ones left out), in percent, as mmseg reports it."""
        return float(self.iou().nanmean()) * 100

    def accuracy(self) -> float:
        """aAcc: correct pixels / labelled pixels, in percent."""
        return float(self.matrix.diagonal().sum() / self.matrix.sum()) * 100

    def reset(self) -> None:
        self.matrix.zero_()


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide_inference windows (y1, y2, x1, x2): a grid of `stride` steps whose last window is
    shifted back to end at the image edge, each crop-sized where the image allows."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride + crop, height), min(col * stride + crop, width)
            windows.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return windows


@torch.no_grad()
def slide_logits(model: Model, image: torch.Tensor, num_classes: int, crop: int, stride: int) -> torch.Tensor:
    """mmseg 0.x slide_inference: `model`'s logits on each window (resized bilinearly to the window when
    the model returns another resolution), summed and divided by how many windows cover each pixel.
    image [B, 3, H, W] -> float32 logits [B, num_classes, H, W]."""
    batch, _, height, width = image.shape
    logits = image.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    count = image.new_zeros((1, 1, height, width), dtype=torch.float32)
    for y1, y2, x1, x2 in slide_windows(height, width, crop, stride):
        out = model(image[:, :, y1:y2, x1:x2])
        if out.shape[1] != num_classes:
            raise ValueError(f"the model returned {out.shape[1]} channels, expected num_classes={num_classes}")
        if out.shape[-2:] != (y2 - y1, x2 - x1):
            out = F.interpolate(out, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
        logits[:, :, y1:y2, x1:x2] += out.float()
        count[:, :, y1:y2, x1:x2] += 1
    return logits / count


@torch.no_grad()
def segment(model: Model, image: torch.Tensor, out_size: tuple[int, int], num_classes: int, crop: int,
            stride: int, scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Class probabilities [B, C, *out_size] for `image` (normalized, at the eval scale), as mmseg's
    aug_test: for each ratio in `scales` (and its mirror image when `flip`), slide over the input
    rescaled by that ratio, resize the logits bilinearly to `out_size` (the original label's size),
    softmax, mirror back; the mean over these. One scale without flip is mmseg's simple_test
    (softmax(resize(slide)): same argmax as the logits)."""
    height, width = image.shape[-2:]
    total = None
    views = 0
    for ratio in scales:
        scaled = image
        if ratio != 1:
            size = (int(height * ratio + 0.5), int(width * ratio + 0.5))  # mmcv's rescale rounding
            scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            logits = slide_logits(model, view, num_classes, crop, stride)
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            probs = probs.flip(-1) if mirrored else probs
            total = probs if total is None else total + probs
            views += 1
    if total is None:
        raise ValueError("scales is empty: give at least one ratio, e.g. (1.0,)")
    return total / views
