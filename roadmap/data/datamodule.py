"""The LightningDataModule: datasets with their transforms, loaders, config checks."""
from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from roadmap import schema
from roadmap.data import litdata_shards as shards
from roadmap.data.errors import DataError
from roadmap.data.gpu_transforms import BatchAugment, SourceTransform
from roadmap.data.gpu_decode import DeviceDecode, check_decode_on, collate_bytes, read_bytes
from roadmap.data.memory import InMemoryImages, cache_dir, fits_in_memory
from roadmap.data.sources import (CIFAR, FOLDER_DATASETS, SyntheticImages, cifar, class_list,
                                  image_folder, locate_image_folder, locate_imagenet22k, split_held_out)
from roadmap.data.transforms import build_eval_transform, build_train_transform

MAX_AUTO_WORKERS = 16


def resolve_num_workers(value: int | str, devices: int) -> int:
    """data.num_workers: an int as it is; "auto": this process's CPU cores per local device, 1..MAX_AUTO_WORKERS."""
    if value != "auto":
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, devices)))


def _in_memory(splits: list[Dataset | None], data_cfg: Mapping[str, Any]) -> list[Dataset | None]:
    """The splits decoded in memory when data.in_memory says so (auto: when they fit), else as they are
    (None, a run without validation's val split, stays None)."""
    setting = schema.value(data_cfg, "data.in_memory")
    if setting is False or setting == "auto" and not fits_in_memory([s for s in splits if s is not None]):
        return splits
    cache = cache_dir(schema.value(data_cfg, "data.cache_dir"))
    on_bad_image = schema.value(data_cfg, "data.on_bad_image")
    return [None if split is None else InMemoryImages(split, cache, on_bad_image) for split in splits]


def augment_on(data_cfg: Mapping[str, Any]) -> str:
    """data.augment_on: where the training batch is augmented ("cpu": loader workers, per image; "gpu":
    the model's device, per batch). Synthetic data is never augmented."""
    return "cpu" if data_cfg["name"] == "synthetic" else str(schema.value(data_cfg, "data.augment_on"))


def decode_on(data_cfg: Mapping[str, Any]) -> str:
    """data.decode_on: where JPEGs are decoded ("cpu": loader workers; "gpu": the batch, on the device)."""
    return str(schema.value(data_cfg, "data.decode_on"))


def _raw(data_cfg: Mapping[str, Any]) -> bool:
    """data.decode_on=gpu: the datasets serve JPEG bytes."""
    return decode_on(data_cfg) == "gpu"


def _check_selection(data_cfg: Mapping[str, Any], shards_format: bool) -> None:
    """data.classes picks class folders of FOLDER_DATASETS; data.held_out, the val images of imagenet22k
    (the others have a val split of their own)."""
    name = data_cfg["name"]
    classes, held_out = schema.value(data_cfg, "data.classes"), schema.value(data_cfg, "data.held_out")
    if classes is not None and (name not in FOLDER_DATASETS or shards_format):
        where = "shards keep the classes they were written with" if shards_format else f"data.name={name!r} has none"
        raise DataError(f"data.classes={classes!r} picks class folders of {', '.join(FOLDER_DATASETS)}; {where}: "
                        "set data.classes=null.")
    if held_out is not None and name != "imagenet22k":
        raise DataError(f"data.held_out={held_out!r} applies to data=imagenet22k (no val split of its own); "
                        f"data.name={name!r} has its val split: set data.held_out=null.")
    if name == "imagenet22k" and shards_format:
        raise DataError("data.format=shards: data=imagenet22k reads its class folders (python -m roadmap.shards "
                        "writes train/ and val/ layouts); use data.format=folder.")


def build_datasets(data_cfg: Mapping[str, Any], augment_cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset | None]:
    """The (train, val) datasets for `data_cfg`, with their transforms; checks the class count. val is None
    for imagenet22k without data.held_out: a run without validation."""
    name = data_cfg["name"]
    image_size = int(data_cfg["image_size"])
    num_classes = int(data_cfg["num_classes"])
    root = Path(data_cfg["root"]).expanduser() if data_cfg["root"] is not None else None  # synthetic has none
    shards_format = name in FOLDER_DATASETS and shards.resolve_format(data_cfg, root) == "shards"
    _check_selection(data_cfg, shards_format)
    if name == "synthetic":
        seed, train_size = int(schema.value(data_cfg, "data.seed")), int(schema.value(data_cfg, "data.train_size"))
        return (
            SyntheticImages(train_size, num_classes, image_size, seed, split=0),
            SyntheticImages(int(schema.value(data_cfg, "data.val_size")), num_classes, image_size, seed, split=1),
        )

    if augment_on(data_cfg) == "gpu":  # the workers decode; the datamodule augments the batch on the device
        train_tf = SourceTransform(image_size, augment_cfg)
    else:
        train_tf = build_train_transform(image_size, augment_cfg)
    eval_tf = build_eval_transform(image_size, augment_cfg)
    if name in CIFAR:
        train_set, val_set = cifar(data_cfg, True, train_tf), cifar(data_cfg, False, eval_tf)
    elif shards_format:
        train_set, val_set = shards.open_splits(root, train_tf, eval_tf, raw=_raw(data_cfg))
    else:
        return _folder_datasets(data_cfg, train_tf, eval_tf)
    _check_class_count(data_cfg, len(train_set.classes), str(root))
    return train_set, val_set


def _folder_datasets(data_cfg: Mapping[str, Any], train_tf: Any, eval_tf: Any) -> tuple[Dataset, Dataset | None]:
    """The ImageFolder splits, only data.classes' class folders when it is set: imagenet22k's root (its val
    split the images of data.held_out), or the train/ and val/ of the others; served as data.decode_on and
    data.in_memory say. The class count is checked before any file name is read (ImageNet-22K has 14M)."""
    on_bad_image = schema.value(data_cfg, "data.on_bad_image")
    wanted = class_list(schema.value(data_cfg, "data.classes"))
    imagenet22k = data_cfg["name"] == "imagenet22k"
    folder = locate_imagenet22k(data_cfg) if imagenet22k else locate_image_folder(data_cfg)
    classes_dir = folder if imagenet22k else folder / "train"
    if wanted is not None:
        _check_class_count(data_cfg, len(wanted.wnids), f"data.classes={wanted.name!r}")
    elif folders := _class_folders(classes_dir):  # none: image_folder says what it expected
        _check_class_count(data_cfg, folders, str(classes_dir))
    if imagenet22k:
        images = image_folder(folder, train_tf, on_bad_image, wanted)
        train_set, val_set = split_held_out(images, schema.value(data_cfg, "data.held_out"), eval_tf)
    else:
        train_set = image_folder(folder / "train", train_tf, on_bad_image, wanted)
        val_set = image_folder(folder / "val", eval_tf, on_bad_image, wanted)
        if train_set.classes != val_set.classes:
            raise DataError(
                f"data.root: {folder}/train and {folder}/val have different class folders "
                f"({len(train_set.classes)} vs {len(val_set.classes)}); both need the same classes."
            )
    if not _raw(data_cfg):
        train_set, val_set = _in_memory([train_set, val_set], data_cfg)
        return train_set, val_set
    for split in (train_set, val_set):  # the workers return file bytes, decoded on the GPU
        if split is not None:
            split.loader, split.transform = read_bytes, None
    return train_set, val_set


def _class_folders(folder: Path) -> int:
    """The class folders in `folder` (as ImageFolder finds them), without reading their files."""
    with os.scandir(folder) as entries:
        return sum(entry.is_dir() for entry in entries)


def _check_class_count(data_cfg: Mapping[str, Any], found: int, where: str) -> None:
    num_classes = int(data_cfg["num_classes"])
    if found != num_classes:
        raise DataError(
            f"data.num_classes={num_classes} but {where} has {found} classes; set data.num_classes={found}."
        )


class RoadmapDataModule(L.LightningDataModule):
    """Train/val loaders for one dataset. Downloads happen in `prepare_data` (one process per node
    under DDP); `setup` builds the datasets. Lightning adds the DistributedSampler under DDP."""

    def __init__(self, data_cfg: Mapping[str, Any], augment_cfg: Mapping[str, Any], per_device_batch: int) -> None:
        super().__init__()
        self.data_cfg = data_cfg
        self.augment_cfg = augment_cfg
        self.per_device_batch = per_device_batch
        self.num_classes = int(data_cfg["num_classes"])
        self.num_workers = schema.value(data_cfg, "data.num_workers")
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        gpu = augment_on(data_cfg) == "gpu"
        self.batch_augment = BatchAugment(int(data_cfg["image_size"]), augment_cfg) if gpu else None
        self.device_decode: DeviceDecode | None = None

    def prepare_data(self) -> None:
        name = self.data_cfg["name"]
        if name in FOLDER_DATASETS:
            # Downloads Imagenette when asked, and decodes into the in-memory cache once per node.
            self.train_set, self.val_set = build_datasets(self.data_cfg, self.augment_cfg)
        elif name in CIFAR and schema.value(self.data_cfg, "data.download"):
            cifar(self.data_cfg, train=True, transform=None)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:  # prepare_data ran in another process, or not at all
            self.train_set, self.val_set = build_datasets(self.data_cfg, self.augment_cfg)
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_augment is not None:  # the run's seed (seed_everything), distinct per rank
            self.batch_augment.seed(torch.initial_seed() + 7919 * (self.trainer.global_rank if self.trainer else 0))
        if len(self.train_set) < self.per_device_batch * world:
            raise DataError(
                f"data: the training split has {len(self.train_set)} images, fewer than one batch "
                f"(per_device_batch={self.per_device_batch} x {world} devices), so drop_last leaves none; "
                "use more data (e.g. data.train_size for synthetic) or a smaller batch."
            )

    def skipped_images(self) -> list[str]:
        """The unreadable images skipped so far (this process's view), train and val."""
        return [path for split in (self.train_set, self.val_set) for path in getattr(split, "skipped", [])]

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        rank = self.trainer.global_rank if self.trainer is not None else 0
        workers = resolve_num_workers(self.num_workers, self.trainer.num_devices if self.trainer is not None else 1)
        # litdata's loader for shards: it splits the chunks between ranks and workers, a new order each epoch.
        loader = shards.dataloader if shards.is_shard_split(dataset) else DataLoader
        return loader(
            dataset,
            batch_size=self.per_device_batch,
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            # Lightning's seeding for every worker (torch, random and numpy, which timm's RandAugment
            # uses), distinct per rank, even when seed_everything(workers=True) was not called.
            worker_init_fn=partial(pl_worker_init_function, rank=rank) if workers > 0 else None,
            collate_fn=collate_bytes if _raw(self.data_cfg) else None,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """data.augment_on=gpu: augment the training batch (uint8 canvases and their sizes) on its device,
        before the LightningModule's MixUp/CutMix; validation batches pass as they are."""
        if self.batch_augment is None or self.trainer is None or not self.trainer.training:
            return batch
        (images, sizes), labels = batch
        return self.batch_augment(images, sizes), labels

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the GPU path's generator, so a resumed run draws what it would have."""
        return {"batch_augment_rng": self.batch_augment.rng_state} if self.batch_augment is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.batch_augment is not None and "batch_augment_rng" in state_dict:
            self.batch_augment.rng_state = state_dict["batch_augment_rng"]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """data.decode_on=gpu: decode and crop the byte batch on the device (nvjpeg reads bytes on the CPU);
        with data.augment_on=gpu a training batch goes on canvases instead, augmented after the transfer."""
        if not _raw(self.data_cfg):
            return batch
        if self.device_decode is None:
            device = self.trainer.strategy.root_device
            self.device_decode = DeviceDecode(int(self.data_cfg["image_size"]), self.augment_cfg, device)
        data, labels = batch
        if self.batch_augment is not None and self.trainer.training:
            return self.device_decode.canvases(data), labels
        return self.device_decode(data, train=self.trainer.training), labels

    @property
    def validates(self) -> bool:
        """Whether the run has a val split (set up): not imagenet22k without data.held_out."""
        return self.val_set is not None

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """No loader (an empty list, which Lightning skips) when there is no val split (imagenet22k without
        data.held_out)."""
        if self.val_set is None and self.train_set is not None:
            return []
        return self._loader(self.val_set, train=False)


def build_datamodule(cfg: Mapping[str, Any], per_device_batch: int) -> RoadmapDataModule:
    """The datamodule for the run config `cfg` (uses `cfg.data` and `cfg.recipe.augment`); checks `cfg.data`
    against the schema (`plan_run` has, for a run) and what the data need of the machine and the recipe."""
    data_cfg = cfg["data"]
    try:
        schema.check(data_cfg, "data")
    except schema.ConfigError as error:
        raise DataError(str(error)) from None
    check_decode_on(data_cfg, cfg["recipe"]["augment"], torch.cuda.is_available())
    if per_device_batch <= 0:
        raise DataError(f"per_device_batch={per_device_batch} must be a positive integer.")
    return RoadmapDataModule(data_cfg, cfg["recipe"]["augment"], per_device_batch)
