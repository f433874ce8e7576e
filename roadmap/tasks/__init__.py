"""What a run trains the rung for (`task.name`): `classification` (the ladder: `roadmap.classifier`),
`detection` (torchvision's Mask R-CNN + FPN on COCO, `roadmap.tasks.detection`) or `segmentation`
(UperNet on ADE20K, `roadmap.tasks.segmentation`). A downstream task puts its head on the rung's
backbone (`roadmap.model.backbone`) after `init_from` has loaded the classification weights into the
rung, and reports its own metrics (`METRICS`) in result.json and results.csv."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from roadmap import schema

TASKS = ("classification", "detection", "segmentation")
# Each task's result.json metrics (percent), the first its headline (the report's ladder, a completed run's must-have).
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("top1",),
    "detection": ("ap_box", "ap_box_50", "ap_box_75", "ap_mask", "ap_mask_50", "ap_mask_75",
                  "ap_box_s", "ap_box_m", "ap_box_l", "ap_mask_s", "ap_mask_m", "ap_mask_l",
                  "ap_box_train", "ap_mask_train"),  # task.eval_train: the training images, scored as val
    "segmentation": ("miou", "aacc", "miou_ms"),
}
# The downstream metrics as metrics.csv columns, logged at each validation (the curves the report draws).
TASK_CURVES = frozenset(f"val/{name}" for task, names in METRICS.items() if task != "classification" for name in names)
# The data sets each task reads (data.name).
DOWNSTREAM_DATASETS = {"detection": ("coco",), "segmentation": ("ade20k",)}
DATASETS = {"classification": tuple(name for name in schema.KEYS["data.name"].choices
                                    if not any(name in names for names in DOWNSTREAM_DATASETS.values())),
            **DOWNSTREAM_DATASETS}


def task_name(cfg: Mapping[str, Any]) -> str:
    """The run config's task (configs recorded before tasks existed: classification)."""
    task = cfg.get("task")
    return schema.value(task, "task.name") if task is not None else "classification"


def headline(task: str) -> str:
    """The metric a completed run of `task` must have, and the ladder plots."""
    return METRICS[task][0]


def check_task(cfg: Mapping[str, Any], arch: Any) -> None:
    """What a task needs of the run config, checked before anything is written: its data set, and for a
    downstream task a rung of roadmap's builder with the four stages (strides 4 to 32) its head takes."""
    task = task_name(cfg)
    data = cfg["data"]["name"]
    if data not in DATASETS[task]:
        other = next(t for t, names in DATASETS.items() if data in names)
        raise schema.ConfigError(f"task={task} does not read data.name={data} (a {other} set); use data="
                                 f"{' or data='.join(DATASETS[task])}, or task={other}")
    if task == "classification":
        return
    if arch is None:
        raise schema.ConfigError(f"task={task} puts its head on a rung of roadmap's builder; "
                                 f"model._target_={cfg['model'].get('_target_')} is another factory")
    if len(arch.depths) != 4:
        raise schema.ConfigError(f"task={task} takes four feature maps at strides 4, 8, 16 and 32; rung "
                                 f"{cfg['step']} has {len(arch.depths)} stages (model.depths={list(arch.depths)})")


def build_task_model(cfg: Any, net: Any) -> Any:
    """The model a run trains: the rung itself (classification), or the task's head on it."""
    task, options = task_name(cfg), cfg.get("task")
    if task == "classification":
        return net
    num_classes = int(cfg.data.num_classes)
    frozen_bn = bool(schema.value(options, "task.frozen_bn"))
    if task == "detection":
        from roadmap.model.detection import mask_rcnn

        augment = cfg.recipe.augment
        return mask_rcnn(net, num_classes + 1, fpn_channels=int(schema.value(options, "task.fpn_channels")),
                         frozen_bn=frozen_bn, min_size=tuple(schema.value(options, "task.train_sizes")),
                         max_size=int(schema.value(options, "task.max_size")),
                         image_mean=list(augment.mean), image_std=list(augment.std),
                         **dict(schema.value(options, "task.detector_options")))
    try:
        from roadmap.model.segmentation import upernet
    except ImportError as error:
        raise schema.ConfigError(f"task=segmentation needs segmentation-models-pytorch ({error}): "
                                 "pip install 'roadmap[segmentation]'") from None

    aux = float(schema.value(options, "task.aux_weight")) > 0
    return upernet(net, num_classes, decoder_channels=int(schema.value(options, "task.decoder_channels")),
                   aux_channels=256 if aux else 0, frozen_bn=frozen_bn)


def build_task_datamodule(cfg: Any, per_device_batch: int) -> Any:
    """The run's datamodule: `roadmap.data`'s for classification, the task's own otherwise."""
    task = task_name(cfg)
    if task == "classification":
        from roadmap.data import build_datamodule

        return build_datamodule(cfg, per_device_batch=per_device_batch)
    from roadmap.data import DataError
    from roadmap.data.datamodule import resolve_num_workers

    try:
        schema.check(cfg.data, "data")
    except schema.ConfigError as error:
        raise DataError(str(error)) from None
    workers = resolve_num_workers(schema.value(cfg.data, "data.num_workers"), int(cfg.trainer.devices))
    if task == "detection":
        from roadmap.tasks.detection import CocoDataModule

        return CocoDataModule(cfg.data, per_device_batch, workers, bool(schema.value(cfg.task, "task.eval_train")))
    from roadmap.tasks.segmentation import ScenesDataModule

    return ScenesDataModule(cfg.data, cfg.task, cfg.recipe.augment, per_device_batch, workers)


def build_task_module(plan: Any, parts: Any) -> Any:
    """The LightningModule that trains and evaluates `parts.model` for the run's task."""
    from omegaconf import OmegaConf

    cfg, task = plan.cfg, task_name(plan.cfg)
    recipe = OmegaConf.to_container(cfg.recipe)
    if task == "detection":
        from roadmap.tasks.detection import Detector

        return Detector(parts.model, recipe, plan.lr, int(cfg.data.image_size), parts.datamodule.eval_sets())
    if task == "segmentation":
        from roadmap.tasks.segmentation import Segmenter

        return Segmenter(parts.model, recipe, plan.lr, int(cfg.data.num_classes), int(cfg.data.image_size),
                         OmegaConf.to_container(cfg.task))
    from roadmap.classifier import Classifier
    from roadmap.plan import CUDA_GRAPH_MODES, compile_mode

    return Classifier(parts.model, recipe, plan.num_classes, lr=plan.lr, channels_last=bool(cfg.trainer.channels_last),
                      cuda_graphs=bool(cfg.trainer.compile) and compile_mode(cfg) in CUDA_GRAPH_MODES)
