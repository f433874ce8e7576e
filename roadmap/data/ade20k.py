"""ADE20K scene parsing (ADEChallengeData2016) for semantic segmentation, as mmsegmentation 0.x reads it
for UperNet (the ConvNeXt paper's setting): the layout `<root>/images/{training,validation}/*.jpg` with
`<root>/annotations/{training,validation}/*.png` (single-channel; 0 = "other", 1..num_classes the classes).
Labels use reduce_zero_label: 0 -> 255 (ignored), k -> k - 1. `train_transform` and `eval_transform` are
mmseg's ADE20K pipelines on tensors (torchvision.transforms.v2, the label as a `tv_tensors.Mask`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from roadmap.data.errors import DataError
from roadmap.data.sources import to_rgb

SPLITS = ("training", "validation")
LAYOUT = ("the ADE20K layout (ADEChallengeData2016): images/{training,validation}/*.jpg and "
          "annotations/{training,validation}/*.png")
IGNORE_INDEX = 255
ADE20K_SCALE = (2048, 512)  # mmseg's img_scale: fit within a 2048 long edge and a 512 short edge
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class ADE20KScenes(Dataset):
    """`split` of the ADE20K-layout tree at `root`: (image float [3, H, W] in [0, 1], label int64 [H, W]),
    the label reduced (0 -> 255 ignored, k -> k - 1); `transform(image, label)` is applied to both."""

    def __init__(self, root: str | Path, split: str = "training", num_classes: int = 150,
                 transform: Transform | None = None) -> None:
        root = Path(root).expanduser()
        if split not in SPLITS:
            raise DataError(f"split={split!r}: expected 'training' or 'validation' (ADE20K's folder names)")
        if not 1 <= num_classes <= 254:
            raise DataError(f"data.num_classes={num_classes}: expected 1..254 (8-bit label pngs; 255 is ignored)")
        self.images_dir = root / "images" / split
        self.annotations_dir = root / "annotations" / split
        for path in (self.images_dir, self.annotations_dir):
            if not path.is_dir():
                raise DataError(f"data.root={str(root)!r}: no {path.relative_to(root)}/ ({LAYOUT})")
        self.images = sorted(self.images_dir.glob("*.jpg"))
        if not self.images:
            raise DataError(f"{self.images_dir}: no .jpg images ({LAYOUT})")
        missing = [p.stem + ".png" for p in self.images if not (self.annotations_dir / f"{p.stem}.png").is_file()]
        if missing:
            raise DataError(f"{self.annotations_dir}: {len(missing)} image(s) have no annotation png "
                            f"({missing[0]} first; each images/{split}/NAME.jpg needs annotations/{split}/NAME.png)")
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def annotation(self, index: int) -> Path:
        """The label png of item `index`."""
        return self.annotations_dir / f"{self.images[index].stem}.png"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.images[index], self.annotation(index)
        try:
            with Image.open(image_path) as file:
                image = to_rgb(file)
        except Exception as error:  # noqa: BLE001 - any unreadable image is one DataError
            raise DataError(f"cannot read image {image_path} ({error})") from None
        try:
            with Image.open(label_path) as file:
                if file.mode not in ("L", "P"):
                    raise ValueError(f"mode {file.mode}, expected a single-channel 8-bit png (L or P)")
                raw = np.asarray(file)
        except Exception as error:  # noqa: BLE001
            raise DataError(f"cannot read annotation {label_path} ({error})") from None
        if raw.shape != (image.height, image.width):
            raise DataError(f"{label_path}: annotation is {raw.shape[1]}x{raw.shape[0]} but its image "
                            f"{image_path.name} is {image.width}x{image.height}")
        top = int(raw.max())
        if top > self.num_classes:
            raise DataError(f"{label_path}: label value {top} > data.num_classes={self.num_classes} "
                            f"(expected 0 = ignored and 1..{self.num_classes}; set data.num_classes to the class count)")
        label = torch.from_numpy(raw.astype(np.int64))
        label = torch.where(label == 0, IGNORE_INDEX, label - 1)  # reduce_zero_label
        pixels = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        if self.transform is not None:
            return self.transform(pixels, label)
        return pixels, label


def fit_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's imrescale size: keep the ratio, fit the long edge in max(scale) and the short in min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _rescale(inpt: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Bilinear without antialiasing, as mmcv's cv2 backend; masks are always resized nearest by v2.
    return F.resize(inpt, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=False)


class RandomRescale(v2.Transform):
    """mmseg Resize(img_scale=scale, ratio_range, keep_ratio=True): fit within (scale * r), r ~ U(ratio_range)."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio_range = scale, ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.ratio_range
        ratio = low + float(torch.rand(())) * (high - low)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return {"size": fit_size(*v2.query_size(flat_inputs), scale)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _rescale(inpt, params["size"])


class RandomCropCatMax(v2.Transform):
    """mmseg RandomCrop: a crop_size crop (clipped to smaller images), redrawn up to 10 times until no class
    covers cat_max_ratio or more of the crop's labelled pixels (and it holds two classes or more)."""

    def __init__(self, crop_size: int, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.crop_size, self.cat_max_ratio, self.ignore_index = crop_size, cat_max_ratio, ignore_index

    def _box(self, height: int, width: int) -> tuple[int, int, int, int]:
        top = int(torch.randint(max(height - self.crop_size, 0) + 1, ()))
        left = int(torch.randint(max(width - self.crop_size, 0) + 1, ()))
        return top, left, min(self.crop_size, height), min(self.crop_size, width)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        box = self._box(height, width)
        masks = [inpt for inpt in flat_inputs if isinstance(inpt, tv_tensors.Mask)]
        if self.cat_max_ratio < 1 and masks:
            for _ in range(10):
                top, left, h, w = box
                crop = masks[0][..., top:top + h, left:left + w]
                counts = torch.bincount(crop[crop != self.ignore_index].flatten())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._box(height, width)  # mmseg keeps the 11th draw when all 10 fail
        return {"box": box}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, *params["box"])


class PhotoMetricDistortion(v2.Transform):
    """mmseg PhotoMetricDistortion on a float image in [0, 1], each step with probability 0.5: additive
    brightness (±32/255), contrast as a plain multiply by U(0.5, 1.5) (before or after the colour steps, at
    random), saturation (HSV S times U(0.5, 1.5)), hue (H shifted by an integer in [-18, 18) of 180)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness_delta: int = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        super().__init__()
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = contrast_range, saturation_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def coin() -> bool:
            return bool(torch.randint(2, ()))

        def uniform(low: float, high: float) -> float:
            return low + float(torch.rand(())) * (high - low)

        # Drawn in mmseg's order.
        brightness = uniform(-self.brightness_delta, self.brightness_delta) / 255 if coin() else None
        contrast_first = coin()
        contrast = uniform(*self.contrast_range) if coin() else None
        saturation = uniform(*self.saturation_range) if coin() else None
        hue = int(torch.randint(-self.hue_delta, self.hue_delta, ())) if coin() else None
        return {"brightness": brightness, "contrast_first": contrast_first, "contrast": contrast,
                "saturation": saturation, "hue": hue}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        image = inpt.as_subclass(torch.Tensor)
        if params["brightness"] is not None:
            image = (image + params["brightness"]).clamp(0, 1)
        if params["contrast_first"] and params["contrast"] is not None:
            image = (image * params["contrast"]).clamp(0, 1)
        if params["saturation"] is not None:
            # HSV's S times a, clipped to 1, with H and V kept: each channel moves away from (or towards) the max.
            top, bottom = image.amax(-3, keepdim=True), image.amin(-3, keepdim=True)
            factor = torch.minimum(torch.full_like(top, params["saturation"]), top / (top - bottom).clamp_min(1e-12))
            image = top - (top - image) * factor
        if params["hue"] is not None:
            image = F.adjust_hue(image, params["hue"] / 180)
        if not params["contrast_first"] and params["contrast"] is not None:
            image = (image * params["contrast"]).clamp(0, 1)
        return tv_tensors.wrap(image, like=inpt)


class PadTo(v2.Transform):
    """mmseg Pad(size=(size, size)): pad bottom and right, the image with 0 and the label with ignore_index."""

    def __init__(self, size: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size, self.ignore_index = size, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size - width, 0), max(self.size - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return F.pad(inpt, params["padding"], fill=fill)


class JointTransform:
    """A v2 pipeline applied to (image, label) as (tv_tensors.Image, tv_tensors.Mask); returns plain tensors."""

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(label))
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def train_transform(crop_size: int, scale: tuple[int, int] = ADE20K_SCALE,
                    ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> JointTransform:
    """mmseg's ADE20K train pipeline: random rescale, cat_max_ratio crop, flip, photometric distortion,
    normalize, pad to crop_size (image 0, label 255). Random draws use torch's generator."""
    return JointTransform(v2.Compose([
        RandomRescale(scale, ratio_range),
        RandomCropCatMax(crop_size, cat_max_ratio),
        v2.RandomHorizontalFlip(0.5),
        PhotoMetricDistortion(),
        v2.Normalize(list(mean), list(std)),
        PadTo(crop_size),
    ]))


class EvalTransform:
    """mmseg's ADE20K test pipeline: the image rescaled to fit `scale` and normalized; the label untouched,
    since mmseg scores predictions resized back to the original label."""

    def __init__(self, scale: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.scale, self.mean, self.std = scale, list(mean), list(std)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = _rescale(image, fit_size(*image.shape[-2:], self.scale))
        return F.normalize(image, self.mean, self.std), label

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, mean={self.mean}, std={self.std})"


def eval_transform(scale: tuple[int, int] = ADE20K_SCALE, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> EvalTransform:
    """The image rescaled (ratio kept) to fit `scale` and normalized; the label stays at its original size."""
    return EvalTransform(scale, mean, std)
