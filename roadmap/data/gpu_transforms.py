"""Batch augmentation on the model's device (`data.augment_on=gpu`): the training transform of
`transforms.py` drawn from the same distribution, applied to a whole uint8 batch at once.

Loader workers only decode and shrink each image to fit a fixed canvas (`SourceTransform`); after
the batch reaches the device, `BatchAugment` does, per sample:
RandomResizedCrop + horizontal flip (one affine grid per batch) -> timm's RandAugment ops ->
Normalize -> RandomErasing. MixUp/CutMix stay in the LightningModule (timm's Mixup, both paths).

Every random parameter is drawn per sample, with timm's sampling rules (tests/test_gpu_augment.py
compares the distributions with timm's own samplers). Small per-sample parameters are drawn on the
CPU in float64, so a seed gives the same parameters on any device; the per-pixel erasing noise is
drawn on the batch's device. `BatchAugment` keeps its own generator state (seeded per DDP rank by the
datamodule, saved in checkpoints), as the CPU path's loader workers are seeded per rank: with the
process's generator, seeded alike on every rank, all ranks would draw the same crops. Deviations from the PIL pixels of the CPU
path: interpolation is torch's (`grid_sample`; bicubic a=-0.75 where PIL uses a=-0.5, no antialias
when a crop shrinks, PIL's edge handling approximated: mean |difference| ~1 grey level on the
geometric ops); AutoContrast is torchvision's (within one grey level of PIL's); the other colour ops
give PIL's pixels exactly. The ops and the sampling of their parameters are timm's.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import _LEVEL_DENOM
from timm.data.transforms import str_to_pil_interp
from torchvision.transforms.v2 import functional as TF

from roadmap.data.errors import DataError
from roadmap.data.transforms import _interpolation, build_rand_augment, eval_resize

# PIL's ITU-R 601-2 luma (Image.convert("L")), in its fixed-point weights.
LUMA = torch.tensor([19595.0, 38470.0, 7471.0], dtype=torch.float64) / 65536
# PIL's ImageFilter.SMOOTH, the degenerate image of ImageEnhance.Sharpness.
SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13


def canvas_size(image_size: int, augment_cfg: Mapping[str, Any]) -> int:
    """The side of the fixed canvas the workers put each image on: the eval resize's short side."""
    resize = eval_resize(image_size, augment_cfg)
    return resize if isinstance(resize, int) else max(resize)


class SourceTransform:
    """The workers' part of the GPU path: a PIL RGB image -> (uint8 [3, S, S] canvas, its (h, w)).
    Images larger than the canvas are shrunk to fit it (aspect kept, PIL's antialiased resize); smaller
    ones are left as they are. The image sits top-left, its edge pixels repeated to fill the canvas;
    crops stay inside (h, w)."""

    def __init__(self, image_size: int, augment_cfg: Mapping[str, Any]) -> None:
        self.size = canvas_size(image_size, augment_cfg)
        self.resample = str_to_pil_interp(_interpolation(augment_cfg))

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = fit_canvas(img.height, img.width, self.size)
        if (width, height) != img.size:
            img = img.resize((width, height), self.resample)
        return on_canvas(TF.pil_to_tensor(img), self.size), torch.tensor([height, width])


def fit_canvas(height: int, width: int, size: int) -> tuple[int, int]:
    """An image's (h, w) on the canvas: shrunk to fit size x size (aspect kept) when larger, else as it is."""
    if max(height, width) <= size:
        return height, width
    shrink = size / max(height, width)
    return max(1, round(height * shrink)), max(1, round(width * shrink))


def on_canvas(image: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 [3, h, w] image (h, w <= size) top-left on a size x size canvas, its edge pixels repeated
    around it (not zeros: interpolation taps at its edge see what PIL's do)."""
    _, height, width = image.shape
    canvas = image.new_empty(3, size, size)
    canvas[:, :height, :width] = image
    canvas[:, :height, width:] = canvas[:, :height, width - 1 : width]
    canvas[:, height:, :] = canvas[:, height - 1 : height, :]
    return canvas


# --- sampling (float64 on the CPU, per sample) --------------------------------------------------------


def _uniform(n: int, low: float, high: float, tries: int = 0) -> torch.Tensor:
    shape = (n, tries) if tries else (n,)
    return low + (high - low) * torch.rand(shape, dtype=torch.float64)


def _randint(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Python's random.randint(low, high) per element (both ends included)."""
    return low + torch.floor(torch.rand(low.shape, dtype=torch.float64) * (high - low + 1))


def _first_fit(fits: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per row, the values at the first try that fits (any where none does), and whether one did."""
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    return (fits.any(dim=1), *(v.gather(1, first).squeeze(1) for v in values))


def sample_crops(
    sizes: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """timm's RandomResizedCropAndInterpolation.get_params per image of (h, w) `sizes` [B, 2]:
    10 tries of area fraction ~ U(scale) and log aspect ~ U(log ratio), the first that fits, at a
    uniform integer position; else the central crop clipped to the ratio range. -> [B, 4] (top, left, h, w)."""
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    n = len(sizes)
    area = _uniform(n, *scale, tries=10) * height * width
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), tries=10))
    crop_w, crop_h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    fits, crop_h, crop_w = _first_fit((crop_w <= width) & (crop_h <= height), crop_h, crop_w)
    height, width = height.squeeze(1), width.squeeze(1)
    # The fallback: the whole image, or its centre clipped to the nearest allowed aspect.
    in_ratio = width / height
    fallback_w = torch.where(in_ratio > max(ratio), torch.round(height * max(ratio)), width)
    fallback_h = torch.where(in_ratio < min(ratio), torch.round(width / min(ratio)), height)
    crop_h, crop_w = torch.where(fits, crop_h, fallback_h), torch.where(fits, crop_w, fallback_w)
    top = torch.where(fits, _randint(torch.zeros(n, dtype=torch.float64), height - crop_h),
                      torch.div(height - crop_h, 2, rounding_mode="floor"))
    left = torch.where(fits, _randint(torch.zeros(n, dtype=torch.float64), width - crop_w),
                       torch.div(width - crop_w, 2, rounding_mode="floor"))
    return torch.stack([top, left, crop_h, crop_w], dim=1)


def sample_erasing(
    n: int, height: int, width: int, probability: float, max_count: int,
    min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
) -> torch.Tensor:
    """timm's RandomErasing boxes per image: erased with `probability`, 1..max_count boxes (uniform),
    each the first of 10 tries of area ~ U(min_area, max_area) x area / count and log aspect ~
    U(+-log(1/min_aspect)) that fits strictly inside. -> [max_count, n, 4] (top, left, h, w); h = 0: none."""
    erased = torch.rand(n, dtype=torch.float64) <= probability
    count = _randint(torch.ones(n, dtype=torch.float64), torch.full((n,), float(max_count)))
    boxes = []
    for box in range(max_count):
        area = _uniform(n, min_area, max_area, tries=10) * height * width / count[:, None]
        aspect = torch.exp(_uniform(n, math.log(min_aspect), -math.log(min_aspect), tries=10))
        box_h, box_w = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
        fits, box_h, box_w = _first_fit((box_w < width) & (box_h < height), box_h, box_w)
        active = erased & fits & (box < count)
        top = _randint(torch.zeros(n, dtype=torch.float64), height - box_h)
        left = _randint(torch.zeros(n, dtype=torch.float64), width - box_w)
        boxes.append(torch.stack([top, left, box_h * active, box_w * active], dim=1))
    return torch.stack(boxes)


def _negate(magnitude: torch.Tensor) -> torch.Tensor:
    """timm's _randomly_negate, per element."""
    return torch.where(torch.rand(magnitude.shape, dtype=torch.float64) > 0.5, -magnitude, magnitude)


def _enhance_increasing(level: torch.Tensor, _: Mapping[str, Any]) -> torch.Tensor:
    return torch.clamp(1.0 + _negate(level * 0.9), min=0.1)


def _solarize(level: torch.Tensor, _: Mapping[str, Any]) -> torch.Tensor:
    return torch.clamp(torch.floor(level * 256), max=256)


# timm's LEVEL_TO_ARG, vectorized: the op's argument from level = magnitude / 10 (per sample).
LEVEL_TO_ARG: dict[str, Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor] | None] = {
    "AutoContrast": None,
    "Equalize": None,
    "Invert": None,
    "Rotate": lambda level, _: _negate(level * 30.0),
    "Posterize": lambda level, _: torch.floor(level * 4),
    "PosterizeIncreasing": lambda level, _: 4 - torch.floor(level * 4),
    "PosterizeOriginal": lambda level, _: torch.floor(level * 4) + 4,
    "Solarize": _solarize,
    "SolarizeIncreasing": lambda level, hp: 256 - _solarize(level, hp),
    "SolarizeAdd": lambda level, _: torch.clamp(torch.floor(level * 110), max=128),
    "Color": lambda level, _: level * 1.8 + 0.1,
    "ColorIncreasing": _enhance_increasing,
    "Contrast": lambda level, _: level * 1.8 + 0.1,
    "ContrastIncreasing": _enhance_increasing,
    "Brightness": lambda level, _: level * 1.8 + 0.1,
    "BrightnessIncreasing": _enhance_increasing,
    "Sharpness": lambda level, _: level * 1.8 + 0.1,
    "SharpnessIncreasing": _enhance_increasing,
    "ShearX": lambda level, _: _negate(level * 0.3),
    "ShearY": lambda level, _: _negate(level * 0.3),
    "TranslateX": lambda level, hp: _negate(level * float(hp["translate_const"])),
    "TranslateY": lambda level, hp: _negate(level * float(hp["translate_const"])),
    "TranslateXRel": lambda level, hp: _negate(level * float(hp.get("translate_pct", 0.45))),
    "TranslateYRel": lambda level, hp: _negate(level * float(hp.get("translate_pct", 0.45))),
}


class RandAugmentSampler:
    """The per-sample choices of a timm RandAugment: per layer, an op drawn uniformly (with
    replacement), applied with the op's probability, at magnitude ~ N(m, mstd) clipped to [0, mmax],
    mapped to the op's argument by timm's level functions."""

    def __init__(self, rand_augment: Any) -> None:
        if rand_augment.choice_weights is not None:
            raise DataError("recipe.augment.randaugment: weighted op choice ('-t...') is not supported with "
                            "data.augment_on=gpu; valid choices: unweighted 'rand-...' strings, or data.augment_on=cpu.")
        self.ops = list(rand_augment.ops)
        self.names = [op.name for op in self.ops]
        unknown = sorted(set(self.names) - set(OPS))
        if unknown:
            raise DataError(f"recipe.augment.randaugment ops {unknown} have no batched version for "
                            f"data.augment_on=gpu; valid ops: {sorted(OPS)}.")
        self.num_layers = int(rand_augment.num_layers)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (op index [layers, n], long; -1 where the layer does nothing), op argument [layers, n] (float64)."""
        choice = torch.randint(len(self.ops), (self.num_layers, n))
        args = torch.zeros(self.num_layers, n, dtype=torch.float64)
        for k, op in enumerate(self.ops):
            mask = choice == k
            skip = torch.rand(mask.shape, dtype=torch.float64) > op.prob if op.prob < 1.0 else torch.zeros_like(mask)
            choice[mask & skip] = -1
            level_fn = LEVEL_TO_ARG[op.name]
            if level_fn is None:
                continue
            magnitude = torch.full(mask.shape, float(op.magnitude), dtype=torch.float64)
            if op.magnitude_std == float("inf"):
                magnitude = _uniform(magnitude.numel(), 0.0, float(op.magnitude)).view(mask.shape)
            elif op.magnitude_std > 0:
                magnitude = magnitude + op.magnitude_std * torch.randn(mask.shape, dtype=torch.float64)
            magnitude = magnitude.clamp(0.0, float(op.magnitude_max or _LEVEL_DENOM))
            args = torch.where(mask, level_fn(magnitude / _LEVEL_DENOM, op.hparams), args)
        return choice, args


# --- ops on float batches holding uint8 values (0..255), per-sample arguments ----------------------


def _to_theta(matrix: torch.Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """An output -> input affine map in pixel coordinates (pixel centres at i + 0.5, as PIL's transforms)
    [n, 2, 3] -> the same map in grid_sample's normalized coordinates (align_corners=False)."""
    to_in = matrix.new_tensor([in_hw[1] / 2, in_hw[0] / 2])
    to_out = matrix.new_tensor([out_hw[1] / 2, out_hw[0] / 2])
    linear = matrix[:, :, :2] * to_out[None, None, :] / to_in[None, :, None]
    shift = (matrix[:, :, :2] @ to_out + matrix[:, :, 2]) / to_in - 1
    return torch.cat([linear, shift[:, :, None]], dim=2)


def _warp(
    images: torch.Tensor, matrix: torch.Tensor, mode: str, fill: torch.Tensor | None, out_size: int | None = None
) -> torch.Tensor:
    """Resample `images` at output -> input pixel map `matrix` (to out_size x out_size, or their own size);
    outside the image: `fill` (per channel), or the edge pixels when fill is None. Rounded and clipped to
    0..255, as PIL's uint8 result."""
    n, _, height, width = images.shape
    out_hw = (height, width) if out_size is None else (out_size, out_size)
    theta = _to_theta(matrix, (height, width), out_hw).to(images.device, images.dtype)
    grid = F.affine_grid(theta, [n, 3, *out_hw], align_corners=False)
    if fill is None:
        out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
    else:
        fill = fill.view(1, -1, 1, 1)
        out = F.grid_sample(images - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill
    return out.clamp_(0, 255).round_()


def _affine_op(build: Callable[[torch.Tensor, int, int], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def op(images: torch.Tensor, arg: torch.Tensor, mode: str, fill: torch.Tensor) -> torch.Tensor:
        return _warp(images, build(arg, images.shape[-2], images.shape[-1]), mode, fill)

    return op


def _matrix(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor,
            f: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.stack([a, b, c], dim=1), torch.stack([d, e, f], dim=1)], dim=1)


def _rotation(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL's Image.rotate (counter-clockwise about the centre) as an output -> input map."""
    angle = -torch.deg2rad(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = width / 2, height / 2
    return _matrix(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def _one_entry(row: int, col: int) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """The identity map with entry (row, col) set to the per-sample argument: PIL's shear and translate."""

    def build(arg: torch.Tensor, *_: int) -> torch.Tensor:
        matrix = torch.eye(2, 3, dtype=arg.dtype).repeat(len(arg), 1, 1)
        matrix[:, row, col] = arg
        return matrix

    return build


_shear_x, _shear_y, _translate_x, _translate_y = (_one_entry(0, 1), _one_entry(1, 0), _one_entry(0, 2), _one_entry(1, 2))


def _per_sample(arg: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return arg.to(images.device, images.dtype).view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, image, factor), the core of every ImageEnhance op."""
    # PIL truncates the blend to uint8: floor, not round (pixel for pixel the same as ImageEnhance).
    return (degenerate + _per_sample(factor, images) * (images - degenerate)).clamp_(0, 255).floor_()


def _grey(images: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L"), [n, 1, H, W]."""
    return (images * LUMA.to(images.device, images.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True).round_()


def _sharpness_degenerate(images: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter; the border pixels stay as they are (as in ImageEnhance.Sharpness)."""
    kernel = SMOOTH.to(images.device, images.dtype).expand(3, 1, 3, 3)
    smooth = F.conv2d(images, kernel, groups=3).round_()
    out = images.clone()
    out[:, :, 1:-1, 1:-1] = smooth
    return out


def _uint8_op(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A torchvision op on a uint8 batch (the same integer pixels PIL works on)."""

    def op(images: torch.Tensor, *_: Any) -> torch.Tensor:
        return fn(images.to(torch.uint8)).to(images.dtype)

    return op


def _posterize(images: torch.Tensor, bits: torch.Tensor, *_: Any) -> torch.Tensor:
    step = _per_sample(2.0 ** (8 - bits.clamp(0, 8)), images)
    return torch.floor(images / step) * step  # 0 bits: black, as roadmap's CPU posterize


def _solarize_op(images: torch.Tensor, threshold: torch.Tensor, *_: Any) -> torch.Tensor:
    return torch.where(images < _per_sample(threshold, images), images, 255 - images)


def _solarize_add(images: torch.Tensor, add: torch.Tensor, *_: Any) -> torch.Tensor:
    return torch.where(images < 128, (images + _per_sample(add, images)).clamp(max=255), images)


def _contrast(images: torch.Tensor, factor: torch.Tensor, *_: Any) -> torch.Tensor:
    mean = torch.floor(_grey(images).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(images), images, factor)


# Each op: (images [n, 3, H, W] float 0..255, argument [n], interpolation, fill [3]) -> images.
OPS: dict[str, Callable[..., torch.Tensor]] = {
    "AutoContrast": _uint8_op(TF.autocontrast),
    "Equalize": _uint8_op(TF.equalize),
    "Invert": lambda images, *_: 255 - images,
    "Rotate": _affine_op(_rotation),
    "Posterize": _posterize,
    "PosterizeIncreasing": _posterize,
    "PosterizeOriginal": _posterize,
    "Solarize": _solarize_op,
    "SolarizeIncreasing": _solarize_op,
    "SolarizeAdd": _solarize_add,
    "Color": lambda images, factor, *_: _blend(_grey(images).expand_as(images), images, factor),
    "Contrast": _contrast,
    "Brightness": lambda images, factor, *_: _blend(torch.zeros_like(images), images, factor),
    "Sharpness": lambda images, factor, *_: _blend(_sharpness_degenerate(images), images, factor),
    "ShearX": _affine_op(_shear_x),
    "ShearY": _affine_op(_shear_y),
    "TranslateX": _affine_op(_translate_x),
    "TranslateY": _affine_op(_translate_y),
    "TranslateXRel": _affine_op(lambda pct, height, width: _translate_x(pct * width)),
    "TranslateYRel": _affine_op(lambda pct, height, width: _translate_y(pct * height)),
}
for _name in ("Color", "Contrast", "Brightness", "Sharpness"):
    OPS[f"{_name}Increasing"] = OPS[_name]


def crop_flip_matrix(boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """The output -> input pixel map of a resized crop (top, left, h, w) to size x size, mirrored where `flip`."""
    top, left, height, width = boxes.unbind(1)
    sx, sy = width / size, height / size
    x_scale, x_shift = torch.where(flip, -sx, sx), torch.where(flip, left + width, left)
    zero = torch.zeros_like(sx)
    return _matrix(x_scale, zero, x_shift, zero, sy, top)


class BatchAugment:
    """The training augmentation of `recipe.augment` on a batch: uint8 canvases [B, 3, S, S] and their
    image sizes [B, 2] (from `SourceTransform`) -> normalized float32 [B, 3, image_size, image_size]
    on the batch's device."""

    def __init__(self, image_size: int, augment_cfg: Mapping[str, Any], seed: int = 0) -> None:
        self.image_size = image_size
        self.seed(seed)
        self.mode = _interpolation(augment_cfg)
        self.scale = tuple(float(s) for s in augment_cfg["scale"])
        self.ratio = tuple(float(r) for r in augment_cfg["ratio"])
        self.hflip = float(augment_cfg["hflip"])
        rand_augment = build_rand_augment(image_size, augment_cfg)
        if rand_augment is None and (augment_cfg["color_jitter"] or 0) > 0:
            raise DataError(f"recipe.augment.color_jitter={augment_cfg['color_jitter']} without RandAugment has no "
                            "batched version; valid with data.augment_on=gpu: color_jitter 0 or null, or a "
                            "recipe.augment.randaugment string (or data.augment_on=cpu).")
        self.rand_augment = RandAugmentSampler(rand_augment) if rand_augment is not None else None
        self.fill = torch.tensor(rand_augment.ops[0].kwargs["fillcolor"], dtype=torch.float32) if rand_augment else None
        self.mean = torch.tensor([float(m) for m in augment_cfg["mean"]]).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in augment_cfg["std"]]).view(1, 3, 1, 1)
        self.erasing = float(augment_cfg["random_erasing"])
        self.erasing_count = int(augment_cfg["random_erasing_count"])
        if self.erasing > 0 and augment_cfg["random_erasing_mode"] != "pixel":
            raise DataError(f"recipe.augment.random_erasing_mode={augment_cfg['random_erasing_mode']!r} has no "
                            "batched version; valid with data.augment_on=gpu: 'pixel' (or data.augment_on=cpu).")

    def seed(self, seed: int) -> None:
        """Start this augmentation's own generator (the state of torch's CPU generator) from `seed`."""
        self.rng_state = torch.Generator().manual_seed(seed).get_state()

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        # The sampling functions use torch's default CPU generator: lend it this augmentation's state.
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            out = self._augment(images, sizes)
            self.rng_state = torch.get_rng_state()
        return out

    def _augment(self, images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        n, device = len(images), images.device
        boxes = sample_crops(sizes.cpu(), self.scale, self.ratio)
        flip = torch.rand(n, dtype=torch.float64) < self.hflip
        x = _warp(images.float(), crop_flip_matrix(boxes, flip, self.image_size), self.mode, None, self.image_size)
        if self.rand_augment is not None:
            x = self.apply_rand_augment(x, *self.rand_augment.sample(n))
        x = (x / 255 - self.mean.to(device)) / self.std.to(device)
        if self.erasing > 0:
            x = erase(x, sample_erasing(n, self.image_size, self.image_size, self.erasing, self.erasing_count))
        return x

    def apply_rand_augment(self, x: torch.Tensor, choice: torch.Tensor, args: torch.Tensor) -> torch.Tensor:
        """Apply layer after layer; within a layer each sample gets at most one op (`choice` -1: none)."""
        fill = self.fill.to(x.device)
        for layer_choice, layer_args in zip(choice, args):
            for k, name in enumerate(self.rand_augment.names):
                index = torch.nonzero(layer_choice == k).squeeze(1)
                if len(index):
                    index_d = index.to(x.device)
                    x[index_d] = OPS[name](x[index_d], layer_args[index], self.mode, fill)
        return x


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fill each box (top, left, h, w) [count, B, 4] of each image with per-pixel N(0, 1) noise (on x's
    device, seeded from torch's default CPU generator)."""
    _, _, height, width = x.shape
    rows = torch.arange(height, device=x.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, 1, width)
    top, left, box_h, box_w = (v.to(x.device, torch.int64).view(-1, len(x), 1, 1) for v in boxes.unbind(-1))
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    noise = torch.Generator(x.device).manual_seed(int(torch.randint(2**62, ())))
    return torch.where(inside.any(dim=0).unsqueeze(1), torch.randn(x.shape, generator=noise, device=x.device), x)
