"""JPEG decode on the GPU (`data.decode_on=gpu`), for ImageNet-size sets whose CPU workers cannot keep up.

The loader workers return each image's file bytes (a uint8 tensor) and the label, `collate_bytes` keeps
them as a list, and `DeviceDecode` runs in the datamodule's `on_before_batch_transfer` (the bytes must
be on the CPU for nvjpeg): one batched `torchvision.io.decode_jpeg(..., device="cuda")`, then per image
the training crop (RandomResizedCrop, from `recipe.augment`) or the eval resize + center crop, then
horizontal flip, float, Normalize and RandomErasing on the batch. With data.augment_on=gpu the training
batch is instead put on the GPU path's canvases (`canvases`: shrunk to fit, as `SourceTransform` does in the
workers) and augmented by `BatchAugment` (RandAugment included) after the transfer. RandAugment and colour
jitter otherwise work on PIL images on the CPU: with data.augment_on=cpu they make the GPU decode an error.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as F

from roadmap import schema
from roadmap.data.errors import DataError
from roadmap.data.gpu_transforms import canvas_size, fit_canvas, on_canvas
from roadmap.data.transforms import eval_resize
from roadmap.data.sources import to_rgb

def check_decode_on(data_cfg: Mapping[str, Any], augment_cfg: Mapping[str, Any], cuda: bool) -> str:
    """data.decode_on, checked against CUDA and the recipe's CPU-only augmentations."""
    where = schema.value(data_cfg, "data.decode_on")
    try:
        schema.check_value("data.decode_on", where)
    except schema.ConfigError as error:
        raise DataError(str(error)) from None
    if where == "cpu":
        return where
    if not cuda:
        raise DataError("data.decode_on=gpu needs CUDA, which is not available here; use data.decode_on=cpu.")
    if data_cfg["name"] not in ("imagenet", "imagenette"):
        raise DataError(f"data.decode_on=gpu decodes JPEG files; data.name={data_cfg['name']!r} has none: use cpu.")
    if schema.value(data_cfg, "data.in_memory") is True:
        raise DataError("data.decode_on=gpu reads the JPEG bytes, data.in_memory=true the decoded pixels: choose one.")
    for key in ("randaugment", "color_jitter"):
        if augment_cfg.get(key) and schema.value(data_cfg, "data.augment_on") == "cpu":
            raise DataError(f"data.decode_on=gpu: recipe.augment.{key}={augment_cfg[key]!r} runs on CPU-decoded PIL "
                            f"images; set recipe.augment.{key}=null, data.augment_on=gpu or data.decode_on=cpu.")
    return where


def read_bytes(path: str) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor (a loader for the ImageFolder when decoding on the GPU)."""
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)


def collate_bytes(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(list of byte tensors, label tensor): the images differ in length, so they are not stacked."""
    return [data for data, _ in batch], torch.tensor([label for _, label in batch], dtype=torch.int64)


def decode_on_cpu(data: torch.Tensor) -> torch.Tensor:
    """One image file's bytes -> RGB uint8 CHW, on the CPU, by the CPU path's conversion (`to_rgb`)."""
    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        return F.pil_to_tensor(to_rgb(image))


def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 CHW images on `device`; one batched decode, or one by one (CMYK JPEGs and other formats,
    which nvjpeg does not read, decode on the CPU as the CPU path does) when the batch fails."""
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec (a DeprecationWarning, or a UserWarning before)
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
        warnings.simplefilter("ignore", UserWarning)
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            images = []
            for one in data:
                try:
                    images.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(decode_on_cpu(one).to(device))
            return images


class DeviceDecode:
    """Byte batches -> normalized float batches at `image_size`, on `device` (see the module docstring)."""

    def __init__(self, image_size: int, augment_cfg: Mapping[str, Any], device: torch.device) -> None:
        self.size, self.device = image_size, device
        self.interpolation = InterpolationMode(augment_cfg["interpolation"])
        self.scale = tuple(float(s) for s in augment_cfg["scale"])
        self.ratio = tuple(float(r) for r in augment_cfg["ratio"])
        self.hflip = float(augment_cfg["hflip"])
        self.resize = eval_resize(image_size, augment_cfg)
        self.canvas = canvas_size(image_size, augment_cfg)  # BatchAugment's canvas (data.augment_on=gpu)
        self.mean = torch.tensor([float(m) for m in augment_cfg["mean"]], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in augment_cfg["std"]], device=device).view(1, 3, 1, 1)
        erasing = float(augment_cfg["random_erasing"])
        self.erasing = RandomErasing(erasing, mode=str(augment_cfg["random_erasing_mode"]),
                                     max_count=int(augment_cfg["random_erasing_count"]),
                                     device=str(device)) if erasing > 0 else None

    def crop(self, image: torch.Tensor, train: bool) -> torch.Tensor:
        """One uint8 image -> float [0, 1] at size x size: the random resized crop, or resize + center crop."""
        image = image.float() / 255
        if train:
            top, left, height, width = RandomResizedCrop.get_params(image, self.scale, self.ratio)
            return F.resized_crop(image, top, left, height, width, [self.size, self.size], self.interpolation,
                                  antialias=True).clamp_(0, 1)
        image = F.resize(image, self.resize, self.interpolation, antialias=True).clamp_(0, 1)
        return F.center_crop(image, [self.size, self.size])

    def canvases(self, data: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Byte batch -> (uint8 canvases [B, 3, S, S] on the device, image sizes [B, 2] on the CPU) for
        `BatchAugment` (data.augment_on=gpu): the workers' `SourceTransform`, with a tensor resize."""
        canvases, sizes = [], []
        for image in decode(data, self.device):
            height, width = fit_canvas(image.shape[1], image.shape[2], self.canvas)
            if (height, width) != image.shape[1:]:
                image = F.resize(image, [height, width], self.interpolation, antialias=True)
            canvases.append(on_canvas(image, self.canvas))
            sizes.append((height, width))
        return torch.stack(canvases), torch.tensor(sizes)

    def __call__(self, data: list[torch.Tensor], train: bool) -> torch.Tensor:
        images = torch.stack([self.crop(image, train) for image in decode(data, self.device)])
        if train and self.hflip > 0:
            flip = torch.rand(len(images), device=self.device) < self.hflip
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        images = (images - self.mean) / self.std
        if train and self.erasing is not None:
            images = self.erasing(images)
        return images
