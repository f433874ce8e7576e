"""Datasets, transforms and the LightningDataModule (config group `data`, augmentation from
`recipe.augment`).

`build_datamodule(cfg, per_device_batch)` is the entry point. Datasets, by `data.name`:

- imagenet:   ImageFolder `<data.root>/train` and `<data.root>/val`; never downloaded.
- imagenette: the same layout; when `data.root` holds no copy, torchvision's Imagenette archive
              (`data.download_size`) is downloaded into `data.root` and its extracted folder used.
- cifar10, cifar100: torchvision CIFAR, downloaded into `data.root` when `data.download`.
- synthetic:  seeded random tensors, already normalized and not augmented (for smoke runs and
              model throughput); same index -> same image and label.

Missing or malformed data raises `DataError`, whose message names the config key, its value and
what would be valid.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import pil_loader
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_interp_mode, str_to_pil_interp

DATASETS = ("imagenet", "imagenette", "cifar10", "cifar100", "synthetic")

# Folder that torchvision.datasets.Imagenette extracts into `root`, per `size`.
IMAGENETTE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}

_CIFAR = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


class DataError(Exception):
    """Missing, malformed or misconfigured data; the message says which config key and how to fix it."""


# --------------------------------------------------------------------------------------------
# Transforms


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
    randaugment = augment_cfg["randaugment"]
    if randaugment:
        if not str(randaugment).startswith("rand"):
            raise DataError(
                f"recipe.augment.randaugment={randaugment!r} is not a timm RandAugment string; "
                "use e.g. 'rand-m9-mstd0.5-inc1', or null to disable it."
            )
        hparams = dict(
            translate_const=int(image_size * 0.45),
            img_mean=tuple(min(255, round(255 * m)) for m in mean),
            interpolation=str_to_pil_interp(interpolation),
        )
        rand_augment = rand_augment_transform(str(randaugment), hparams)
        for op in rand_augment.ops:
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
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


def build_eval_transform(image_size: int, augment_cfg: Mapping[str, Any]) -> transforms.Compose:
    """Resize the short side to floor(image_size / crop_pct), center-crop image_size, ToTensor, Normalize."""
    interpolation = _interpolation(augment_cfg)
    crop_pct = float(augment_cfg["crop_pct"])
    if not 0 < crop_pct <= 1:
        raise DataError(f"recipe.augment.crop_pct={crop_pct} must lie in (0, 1].")
    return transforms.Compose(
        [
            transforms.Resize(math.floor(image_size / crop_pct), str_to_interp_mode(interpolation)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(
                mean=torch.tensor([float(m) for m in augment_cfg["mean"]]),
                std=torch.tensor([float(s) for s in augment_cfg["std"]]),
            ),
        ]
    )


# --------------------------------------------------------------------------------------------
# Datasets


class SyntheticImages(Dataset):
    """Deterministic random images, already normalized (no transform is applied to them).

    Image i is zero-mean, unit-variance uniform noise from a generator seeded by (seed, split, i),
    plus a per-class colour offset (seeded by `seed`, shared by the splits) so that the labels are
    learnable; label i is i % num_classes.
    """

    def __init__(self, size: int, num_classes: int, image_size: int, seed: int, split: int) -> None:
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        self.split = split
        colors = np.random.default_rng([seed]).standard_normal((num_classes, 3, 1, 1), dtype=np.float32)
        self.class_colors = torch.from_numpy(colors)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        # numpy's SeedSequence mixes all of (seed, split, index); torch's CPU generator keeps only 32 bits.
        rng = np.random.default_rng([self.seed, self.split, index])
        # Uniform, not normal: 4x cheaper to draw (~0.35 ms for a 224px image).
        noise = torch.from_numpy(rng.random((3, self.image_size, self.image_size), dtype=np.float32))
        label = index % self.num_classes
        return (noise - 0.5) * math.sqrt(12) + self.class_colors[label], label


def _image_folder(split_dir: Path, transform: Any) -> datasets.ImageFolder:
    """An ImageFolder over `split_dir` (RGB images); a DataError when it has no classes or an empty class."""
    try:
        # pil_loader converts to RGB: some ImageNet/Imagenette JPEGs are grayscale (mode L) or CMYK.
        dataset = datasets.ImageFolder(str(split_dir), transform=transform, loader=pil_loader, allow_empty=True)
    except FileNotFoundError as err:
        raise DataError(
            f"data.root: {split_dir} holds no class folders ({err}); expected {split_dir}/<class>/<image>."
        ) from err
    counts = Counter(dataset.targets)
    empty = [str(split_dir / name) for name, idx in dataset.class_to_idx.items() if counts[idx] == 0]
    if empty:
        raise DataError(
            f"data.root: class folder(s) without images: {', '.join(empty)}; every class folder under "
            f"{split_dir} must hold at least one image (.jpg, .jpeg, .png, ...)."
        )
    return dataset


_ROOT_HELP = (
    "or set ROADMAP_DATA_DIR to the directory that holds the dataset folder (data.root defaults to "
    "${ROADMAP_DATA_DIR}/<dataset folder>, see conf/data/; ROADMAP_DATA_DIR defaults to ./data)."
)


def _show(root: Path) -> str:
    """`root` as configured, plus where it points when relative (to the working directory)."""
    return repr(str(root)) if root.is_absolute() else f"{str(root)!r} (= {root.resolve()})"


def _missing_folder_message(name: str, root: Path, extra: str = "") -> str:
    return (
        f"data.root={_show(root)} holds no {name} copy: expected {root}/train/<class>/<image> and "
        f"{root}/val/<class>/<image>.{extra} Point data.root at a folder that has train/ and val/, {_ROOT_HELP}"
    )


def _has_splits(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def locate_image_folder(data_cfg: Mapping[str, Any]) -> Path:
    """The folder holding train/ and val/ for imagenet or imagenette; downloads Imagenette when
    `data.download` and no copy is found."""
    name = data_cfg["name"]
    root = Path(data_cfg["root"]).expanduser()
    if _has_splits(root):
        return root
    if name == "imagenet":
        raise DataError(_missing_folder_message("ImageNet", root, " ImageNet is never downloaded."))

    size = str(data_cfg.get("download_size", "160px"))
    if size not in IMAGENETTE_FOLDERS:
        raise DataError(
            f"data.download_size={size!r} is not an Imagenette size; use one of {tuple(IMAGENETTE_FOLDERS)}."
        )
    extracted = root / IMAGENETTE_FOLDERS[size]
    if _has_splits(extracted):
        return extracted
    if not data_cfg.get("download", True):
        raise DataError(
            _missing_folder_message(
                "Imagenette", root, f" Nor does {extracted}; data.download=false, so nothing was downloaded."
            )
        )
    try:
        datasets.Imagenette(str(root), split="train", size=size, download=True)
    except Exception as err:  # offline, DNS, HTTP, checksum: all mean "no copy here"
        raise DataError(
            _missing_folder_message(
                "Imagenette",
                root,
                f" Downloading Imagenette ({size}) into it failed ({type(err).__name__}: {err}); on a machine "
                f"with network access, torchvision.datasets.Imagenette('{root}', size='{size}', download=True) "
                f"fetches it (into {extracted}), then copy it here.",
            )
        ) from err
    if not _has_splits(extracted):
        raise DataError(f"data.root={_show(root)}: the Imagenette download did not produce {extracted}/train, /val.")
    return extracted


def _cifar(data_cfg: Mapping[str, Any], train: bool, transform: Any) -> Dataset:
    name = data_cfg["name"]
    root = Path(data_cfg["root"]).expanduser()
    download = bool(data_cfg.get("download", True))
    try:
        return _CIFAR[name](str(root), train=train, transform=transform, download=download)
    except Exception as err:
        how = (
            f"downloading it there failed ({type(err).__name__}: {err}); on a machine with network access "
            f"torchvision.datasets.{_CIFAR[name].__name__}('{root}', download=True) fetches it, then copy it here"
            if download
            else "data.download=false, so nothing was downloaded; set data.download=true when online"
        )
        raise DataError(
            f"data.root={_show(root)} holds no valid {name} copy (torchvision's python-pickle batches); {how}. "
            f"Point data.root at an existing copy, {_ROOT_HELP}"
        ) from err


def build_datasets(data_cfg: Mapping[str, Any], augment_cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    """The (train, val) datasets for `data_cfg`, with their transforms; checks the class count."""
    name = data_cfg["name"]
    image_size = int(data_cfg["image_size"])
    num_classes = int(data_cfg["num_classes"])
    if name == "synthetic":
        seed = int(data_cfg.get("seed", 0))
        return (
            SyntheticImages(int(data_cfg["train_size"]), num_classes, image_size, seed, split=0),
            SyntheticImages(int(data_cfg["val_size"]), num_classes, image_size, seed, split=1),
        )

    train_tf = build_train_transform(image_size, augment_cfg)
    eval_tf = build_eval_transform(image_size, augment_cfg)
    if name in _CIFAR:
        train_set, val_set = _cifar(data_cfg, True, train_tf), _cifar(data_cfg, False, eval_tf)
        found, where = len(train_set.classes), str(data_cfg["root"])
    else:
        folder = locate_image_folder(data_cfg)
        train_set, val_set = _image_folder(folder / "train", train_tf), _image_folder(folder / "val", eval_tf)
        if train_set.classes != val_set.classes:
            raise DataError(
                f"data.root: {folder}/train and {folder}/val have different class folders "
                f"({len(train_set.classes)} vs {len(val_set.classes)}); both need the same classes."
            )
        found, where = len(train_set.classes), f"{folder}/train"
    if found != num_classes:
        raise DataError(
            f"data.num_classes={num_classes} but {where} has {found} classes; set data.num_classes={found}."
        )
    return train_set, val_set


# --------------------------------------------------------------------------------------------
# DataModule


class RoadmapDataModule(L.LightningDataModule):
    """Train/val loaders for one dataset. Downloads happen in `prepare_data` (one process per node
    under DDP); `setup` builds the datasets. Lightning adds the DistributedSampler under DDP."""

    def __init__(self, data_cfg: Mapping[str, Any], augment_cfg: Mapping[str, Any], per_device_batch: int) -> None:
        super().__init__()
        self.data_cfg = data_cfg
        self.augment_cfg = augment_cfg
        self.per_device_batch = per_device_batch
        self.num_classes = int(data_cfg["num_classes"])
        self.num_workers = int(data_cfg.get("num_workers", 2))
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def prepare_data(self) -> None:
        name = self.data_cfg["name"]
        if name == "imagenette":
            locate_image_folder(self.data_cfg)
        elif name in _CIFAR and self.data_cfg.get("download", True):
            _cifar(self.data_cfg, train=True, transform=None)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set = build_datasets(self.data_cfg, self.augment_cfg)
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(self.train_set) < self.per_device_batch * world:
            raise DataError(
                f"data: the training split has {len(self.train_set)} images, fewer than one batch "
                f"(per_device_batch={self.per_device_batch} x {world} devices), so drop_last leaves none; "
                "use more data (e.g. data.train_size for synthetic) or a smaller batch."
            )

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Lightning's seeding for every worker (torch, random and numpy, which timm's RandAugment
            # uses), distinct per rank, even when seed_everything(workers=True) was not called.
            worker_init_fn=partial(pl_worker_init_function, rank=rank) if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


def build_datamodule(cfg: Mapping[str, Any], per_device_batch: int) -> RoadmapDataModule:
    """The datamodule for the run config `cfg` (uses `cfg.data` and `cfg.recipe.augment`)."""
    data_cfg = cfg["data"]
    name = data_cfg["name"]
    if name not in DATASETS:
        raise DataError(f"data.name={name!r} is not a known dataset; use one of {DATASETS} (data=<name>).")
    for key in ("image_size", "num_classes"):
        if int(data_cfg[key]) <= 0:
            raise DataError(f"data.{key}={data_cfg[key]} must be a positive integer.")
    if int(data_cfg.get("num_workers", 2)) < 0:
        raise DataError(f"data.num_workers={data_cfg['num_workers']} must be >= 0.")
    if per_device_batch <= 0:
        raise DataError(f"per_device_batch={per_device_batch} must be a positive integer.")
    return RoadmapDataModule(data_cfg, cfg["recipe"]["augment"], per_device_batch)
