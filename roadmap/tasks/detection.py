"""task=detection: Mask R-CNN (`roadmap.model.detection`) trained and evaluated on COCO instances
(`roadmap.data.coco`, `roadmap.evaluation.coco`): the loss is the sum of torchvision's five losses;
validation scores the raw model's detections with pycocotools' figures (AP^box, AP^mask, in percent)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from roadmap.classifier import FiniteLossCheck
from roadmap.data.errors import DataError
from roadmap.recipe import optimizer_and_schedule
from roadmap.tasks.data import TaskDataModule


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Images of different sizes stay a list (Mask R-CNN batches them itself)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class RandomHorizontalFlip:
    """The detection training's flip (p=0.5): the image, its boxes and its masks together."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if torch.rand(()) >= self.p:
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


class Transformed(Dataset):
    """`dataset`'s items through `transform(image, target)`."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.transform(*self.dataset[index])


class CocoDataModule(TaskDataModule):
    """COCO 2017's train2017 (flipped at random; Mask R-CNN draws the scale) and val2017."""

    collate_fn = staticmethod(collate_detection)

    def __init__(self, data_cfg: Mapping[str, Any], per_device_batch: int, num_workers: int,
                 eval_train: bool = False) -> None:
        super().__init__(per_device_batch, num_workers)
        self.data_cfg, self.eval_train = data_cfg, eval_train

    def build(self) -> tuple[Dataset, Any]:
        from roadmap.data.coco import CocoInstances

        train, val = (CocoInstances(self.data_cfg["root"], split) for split in ("train", "val"))
        found = len(train.category_ids)
        if found != int(self.data_cfg["num_classes"]):
            raise DataError(f"data.num_classes={self.data_cfg['num_classes']} but {self.data_cfg['root']} has "
                            f"{found} categories; set data.num_classes={found}.")
        if not any(train.coco.anns):
            raise DataError(f"data.root={self.data_cfg['root']}: the training annotations list no objects")
        return Transformed(train, RandomHorizontalFlip()), val

    def eval_sets(self) -> dict[str, Any]:
        """What each validation scores, by metric suffix: val2017 (""), and with task.eval_train the
        training images as they are ("_train")."""
        sets = {"": self.val_set}
        if self.eval_train:
            sets["_train"] = self.train_set.dataset
        return sets

    def val_dataloader(self) -> Any:
        loaders = [self._loader(dataset, train=False) for dataset in self.eval_sets().values()]
        return loaders if len(loaders) > 1 else loaders[0]


class Detector(L.LightningModule):
    """Trains `model` (a RungMaskRCNN) with the recipe's optimizer and schedule; scores each of `eval_sets`
    (metric suffix → CocoInstances split, the datamodule's loaders in order) at the short side `eval_size`
    (training draws its short sides from the model's `min_size`)."""

    def __init__(self, model: torch.nn.Module, recipe: dict[str, Any], lr: float, eval_size: int,
                 eval_sets: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.recipe, self.lr = model, recipe, lr
        self.train_sizes, self.eval_size = tuple(model.transform.min_size), eval_size
        self.eval_sets = eval_sets
        self.evaluators: list[Any] = []
        self.finite_loss = FiniteLossCheck()

    def on_train_epoch_start(self) -> None:
        self.model.transform.min_size = self.train_sizes

    def training_step(self, batch: tuple[list, list], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
        loss = sum(losses.values())
        self.finite_loss.watch(loss, self, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(images))
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        from roadmap.evaluation.coco import CocoEvaluator

        self.model.transform.min_size = (self.eval_size,)
        if not self.evaluators:
            self.evaluators = [CocoEvaluator(dataset) for dataset in self.eval_sets.values()]
        for evaluator in self.evaluators:
            evaluator.reset()

    def validation_step(self, batch: tuple[list, list], batch_idx: int, dataloader_idx: int = 0) -> None:
        images, targets = batch
        outputs = self.model(images)
        self.evaluators[dataloader_idx].update([int(t["image_id"]) for t in targets],
                                               [{k: v.detach().cpu() for k, v in o.items()} for o in outputs])

    def on_validation_epoch_end(self) -> None:
        for suffix, evaluator in zip(self.eval_sets, self.evaluators):
            if self.trainer.world_size > 1:  # every rank scores every rank's detections (the same figures)
                gathered: list[Any] = [None] * self.trainer.world_size
                torch.distributed.all_gather_object(gathered, (evaluator.image_ids(), evaluator.detections()))
                evaluator.reset()
                for image_ids, detections in gathered:
                    evaluator.add(detections, image_ids)
            if not evaluator.image_ids():  # trainer.limit_val_batches left this set out
                continue
            for name, value in evaluator.compute().items():
                if value is not None and (not suffix or name in ("ap_box", "ap_mask")):
                    self.log(f"val/{name}{suffix}", float(value), prog_bar=name == "ap_box" and not suffix,
                             add_dataloader_idx=False)
        self.model.transform.min_size = self.train_sizes

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_and_schedule(self.trainer, self.model, self.recipe, self.lr)
