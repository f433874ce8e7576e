"""Datasets, transforms and the LightningDataModule (config group `data`, augmentation from
`recipe.augment`).

`build_datamodule(cfg, per_device_batch)` is the entry point. Datasets, by `data.name`:

- imagenet:   ImageFolder `<data.root>/train` and `<data.root>/val`; never downloaded. When data.root
              holds torchvision's ImageNet archives + devkit instead, they are extracted there once.
- imagenette: the same layout; when `data.root` holds no copy, torchvision's Imagenette archive
              (`data.download_size`) is downloaded into `data.root` and its extracted folder used.
- cifar10, cifar100: torchvision CIFAR, downloaded into `data.root` when `data.download`.
- synthetic:  seeded random tensors, already normalized and not augmented (for smoke runs and
              model throughput); same index -> same image and label.

Missing or malformed data raises `DataError`, whose message names the config key, its value and
what would be valid.

Modules: `sources` (where the images come from, and `to_rgb`, every path's image decode), `transforms`
(CPU augmentation), `gpu_transforms` (the same augmentation on a batch on the model's device,
`data.augment_on=gpu`), `module` (the datamodule and its config checks), `memory` (data.in_memory),
`shards` (data.format=shards: litdata shards and their writer command; `shard_dataset`, their reader),
`gpu_decode` (data.decode_on=gpu), `errors`.
"""
from roadmap.data.errors import DataError
from roadmap.data.datamodule import RoadmapDataModule, augment_on, build_datamodule, build_datasets, decode_on
from roadmap.data.sources import DATASETS, IMAGENETTE_FOLDERS, SyntheticImages, locate_image_folder
from roadmap.data.transforms import build_eval_transform, build_train_transform

__all__ = [
    "DATASETS", "IMAGENETTE_FOLDERS", "DataError", "RoadmapDataModule", "SyntheticImages", "augment_on", "build_datamodule",
    "build_datasets", "decode_on", "build_eval_transform", "build_train_transform", "locate_image_folder",
]
