"""CPU training and eval transforms (timm's ops, on PIL images), built from `recipe.augment`."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image, ImageOps
from timm.data.auto_augment import RandAugment, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_interp_mode, str_to_pil_interp
from torchvision import transforms

from roadmap import schema
from roadmap.data.errors import DataError

def _interpolation(augment_cfg: Mapping[str, Any]) -> str:
    name = augment_cfg["interpolation"]
    valid = ("nearest", "bilinear", "bicubic")
    if name not in valid:
        raise DataError(f"recipe.augment.interpolation={name!r} is not supported; use one of {valid}.")
    return name


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's RandAugment posterize, keeping older Pillow's result for 0 bits (a black image).

    timm asks for 0 bits at high magnitudes ('inc1' at m >= 10, which m9-mstd0.5 reaches); Pillow 13
    raises ValueError there, which would crash ~0.2% of training images (timm's own pipeline too).
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def build_rand_augment(image_size: int, augment_cfg: Mapping[str, Any]) -> RandAugment | None:
    """timm's RandAugment for `recipe.augment.randaugment` (None when it is off), as both paths use it:
    the CPU path applies it to PIL images, the GPU path reads its ops, probabilities and magnitudes."""
    randaugment = augment_cfg["randaugment"]
    if not randaugment:
        return None
    if not str(randaugment).startswith("rand"):
        raise DataError(
            f"recipe.augment.randaugment={randaugment!r} is not a timm RandAugment string; "
            "use e.g. 'rand-m9-mstd0.5-inc1', or null to disable it."
        )
    hparams = dict(
        translate_const=int(image_size * 0.45),
        img_mean=tuple(min(255, round(255 * float(m))) for m in augment_cfg["mean"]),
        interpolation=str_to_pil_interp(_interpolation(augment_cfg)),
    )
    rand_augment = rand_augment_transform(str(randaugment), hparams)
    for op in rand_augment.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize
    return rand_augment


def build_train_transform(image_size: int, augment_cfg: Mapping[str, Any]) -> transforms.Compose:
    """The training transform: timm's `create_transform(is_training=True)` pipeline for these settings.

    RandomResizedCrop -> horizontal flip -> RandAugment (or colour jitter when RandAugment is off)
    -> ToTensor -> Normalize -> RandomErasing (when its probability is > 0). Input: a PIL RGB image.
    """
    interpolation = _interpolation(augment_cfg)
    mean = tuple(float(m) for m in augment_cfg["mean"])
    std = tuple(float(s) for s in augment_cfg["std"])
    steps: list[Any] = [
        # timm's crop rather than torchvision's: the same sampling, ~25 us/image less overhead.
        RandomResizedCropAndInterpolation(
            image_size,
            scale=tuple(float(s) for s in augment_cfg["scale"]),
            ratio=tuple(float(r) for r in augment_cfg["ratio"]),
            interpolation=interpolation,
        )
    ]
    if augment_cfg["hflip"] > 0:
        steps.append(transforms.RandomHorizontalFlip(p=float(augment_cfg["hflip"])))
    rand_augment = build_rand_augment(image_size, augment_cfg)
    if rand_augment is not None:
        steps.append(rand_augment)
    elif (augment_cfg["color_jitter"] or 0) > 0:
        # A scalar jitters brightness, contrast and saturation alike, no hue (timm's convention).
        strength = float(augment_cfg["color_jitter"])
        steps.append(transforms.ColorJitter(strength, strength, strength))
    # Tensors, not tuples: Normalize would convert a tuple on every call.
    steps += [transforms.ToTensor(), transforms.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))]
    if augment_cfg["random_erasing"] > 0:
        steps.append(
            RandomErasing(
                float(augment_cfg["random_erasing"]),
                mode=str(augment_cfg["random_erasing_mode"]),
                max_count=int(augment_cfg["random_erasing_count"]),
                device="cpu",
            )
        )
    return transforms.Compose(steps)


def eval_resize(image_size: int, augment_cfg: Mapping[str, Any]) -> int | list[int]:
    """The eval resize before the center crop of image_size: the short side to floor(image_size / crop_pct),
    or, from `eval_warp_from` px on, the whole image to image_size x image_size (a warp, nothing cropped),
    as the official ConvNeXt code evaluates at 384 px."""
    warp_from = schema.value(augment_cfg, "recipe.augment.eval_warp_from")
    if warp_from is not None and image_size >= warp_from:
        return [image_size, image_size]
    crop_pct = float(augment_cfg["crop_pct"])
    if not 0 < crop_pct <= 1:
        raise DataError(f"recipe.augment.crop_pct={crop_pct} must lie in (0, 1].")
    return math.floor(image_size / crop_pct)


def build_eval_transform(image_size: int, augment_cfg: Mapping[str, Any]) -> transforms.Compose:
    """The eval resize (`eval_resize`), center-crop image_size, ToTensor, Normalize."""
    interpolation = _interpolation(augment_cfg)
    return transforms.Compose(
        [
            transforms.Resize(eval_resize(image_size, augment_cfg), str_to_interp_mode(interpolation)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(
                mean=torch.tensor([float(m) for m in augment_cfg["mean"]]),
                std=torch.tensor([float(s) for s in augment_cfg["std"]]),
            ),
        ]
    )
