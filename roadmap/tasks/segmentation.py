"""task=segmentation: UperNet (`roadmap.model.segmentation`) trained and evaluated on ADE20K's layout
(`roadmap.data.ade20k`): cross-entropy on the decoder's logits plus `task.aux_weight` × the FCN
auxiliary head's, label 255 ignored; validation slides a `data.image_size` window over each image at
its evaluation scale and accumulates one confusion matrix (`roadmap.evaluation.segmentation`), so mIoU
is the paper's single-scale figure; `task.eval_ratios` adds the multi-scale + flip mIoU of the final model."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import Dataset

from roadmap.classifier import FiniteLossCheck
from roadmap.data.ade20k import (
    IGNORE_INDEX,
    ADE20KScenes,
    eval_transform,
    train_transform,
)
from roadmap.recipe import optimizer_and_schedule
from roadmap.tasks.data import TaskDataModule


class ScenesDataModule(TaskDataModule):
    """ADE20K's training images (rescaled, cropped, flipped and colour-distorted at random) and its
    validation images at their evaluation scale, one per batch, with their labels at full size."""

    def __init__(self, data_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any], augment_cfg: Mapping[str, Any],
                 per_device_batch: int, num_workers: int) -> None:
        super().__init__(per_device_batch, num_workers)
        self.data_cfg, self.task_cfg, self.augment_cfg = data_cfg, task_cfg, augment_cfg

    def build(self) -> tuple[Dataset, Dataset]:
        root, classes = self.data_cfg["root"], int(self.data_cfg["num_classes"])
        mean, std = tuple(self.augment_cfg["mean"]), tuple(self.augment_cfg["std"])
        scale = tuple(self.task_cfg["scale"])
        train = ADE20KScenes(root, "training", classes, train_transform(
            int(self.data_cfg["image_size"]), scale=scale, ratio_range=tuple(self.task_cfg["ratio_range"]),
            mean=mean, std=std))
        return train, ADE20KScenes(root, "validation", classes, eval_transform(scale=scale, mean=mean, std=std))


class Segmenter(L.LightningModule):
    """Trains `model` (UperNet on a rung) with the recipe's optimizer and schedule; evaluates mIoU."""

    def __init__(self, model: nn.Module, recipe: dict[str, Any], lr: float, num_classes: int, window: int,
                 task: Mapping[str, Any]) -> None:
        super().__init__()
        from roadmap.evaluation.segmentation import ConfusionMatrix

        self.model, self.recipe, self.lr = model, recipe, lr
        self.num_classes, self.window = num_classes, window
        self.aux_weight, self.stride = float(task["aux_weight"]), int(task["slide_stride"])
        self.eval_ratios = task.get("eval_ratios")
        self.confusion = ConfusionMatrix(num_classes, IGNORE_INDEX)
        self.confusion_ms = ConfusionMatrix(num_classes, IGNORE_INDEX)
        self.finite_loss = FiniteLossCheck()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        from roadmap.model.segmentation import segmentation_loss

        images, labels = batch
        loss = segmentation_loss(self.model(images), labels, self.aux_weight, IGNORE_INDEX)
        self.finite_loss.watch(loss, self, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(images))
        return loss

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]

    def _final(self) -> bool:
        """This validation scores the final model (its last epoch or step)."""
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.global_step >= trainer.max_steps
        return trainer.current_epoch + 1 >= int(trainer.max_epochs)

    def on_validation_epoch_start(self) -> None:
        self.confusion.reset()
        self.confusion_ms.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        from roadmap.evaluation.segmentation import segment

        image, label = batch
        size = tuple(label.shape[-2:])
        logits = segment(self._logits, image, size, self.num_classes, self.window, self.stride)
        self.confusion.update(logits.argmax(1), label)
        if self.eval_ratios and self._final():
            logits = segment(self._logits, image, size, self.num_classes, self.window, self.stride,
                             scales=tuple(self.eval_ratios), flip=True)
            self.confusion_ms.update(logits.argmax(1), label)

    def on_validation_epoch_end(self) -> None:
        scores = {"miou": self.confusion, "miou_ms": self.confusion_ms}
        for name, confusion in scores.items():
            if self.trainer.world_size > 1:
                confusion.matrix = self.all_gather(confusion.matrix.to(self.device)).sum(0).cpu()
            if int(confusion.matrix.sum()) == 0:
                continue
            self.log(f"val/{name}", confusion.miou(), prog_bar=name == "miou")
            if name == "miou":
                self.log("val/aacc", confusion.accuracy())

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_and_schedule(self.trainer, self.model, self.recipe, self.lr)
