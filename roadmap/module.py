"""The LightningModule: one rung trained with the recipe; top-1/top-5 of the raw model and,
separately, of its EMA (the paper's rung numbers are without EMA)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.classification import MulticlassAccuracy

from roadmap.recipe import build_mixup, build_optimizer, build_schedule, build_train_loss, scaled_lr

log = logging.getLogger("roadmap.module")

# Warn (once per fit) when the train step waited on the loader for more than this share of an epoch.
DATA_WAIT_WARNING = 0.2


def ema_update(decay: float, warmup: bool) -> Callable[..., None]:
    """AveragedModel's EMA step; with `warmup` the decay ramps up as min(decay, (1+n)/(10+n)) over
    the first updates (timm's / TF's EMA warmup), so a short run's EMA is not stuck near its init."""
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        current = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1 - current)
        else:  # integer buffers (BatchNorm's num_batches_tracked), as torch's own EMA does
            for ema, param in zip(ema_params, params):
                ema.copy_(ema * current + param * (1 - current))

    return update


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class Classifier(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        recipe: dict[str, Any],
        num_classes: int,
        global_batch: int,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.global_batch = global_batch
        self.channels_last = channels_last
        self.lr = scaled_lr(recipe["optimizer"], global_batch)
        self.mixup = build_mixup(recipe, num_classes)
        self.train_loss = build_train_loss(recipe, mixing=self.mixup is not None)
        self.ema: AveragedModel | None = None
        if recipe.get("ema_decay"):
            # Buffers too: the EMA model's BatchNorm statistics follow the averaged weights.
            average = ema_update(float(recipe["ema_decay"]), bool(recipe.get("ema_warmup")))
            self.ema = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
            self.ema.requires_grad_(False)
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "top5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
                "top1_ema": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "top5_ema": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
            }
        )
        self.train_images = 0  # this process's, since the last epoch start
        self.train_seconds = 0.0
        self.data_wait_seconds = 0.0  # from one batch's end to the next one's start (the loader)
        self._batch_start = 0.0
        self._batch_end: float | None = None
        self._warned_data_wait = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def on_train_epoch_start(self) -> None:
        self.train_images, self.train_seconds, self.data_wait_seconds = 0, 0.0, 0.0
        self._batch_end = None  # the first batch's wait includes starting the workers: not counted

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()
        if self._batch_end is not None:
            self.data_wait_seconds += self._batch_start - self._batch_end

    def on_train_epoch_end(self) -> None:
        total = self.data_wait_seconds + self.train_seconds
        if not self._warned_data_wait and total > 0 and self.data_wait_seconds / total > DATA_WAIT_WARNING:
            self._warned_data_wait = True
            workers = getattr(self.trainer.train_dataloader, "num_workers", "?")
            log.warning(
                "the train step waited on data for %.0f%% of epoch %d (%d loader workers): the input pipeline "
                "is the bottleneck; try more data.num_workers, or data.in_memory=true for a small set",
                100 * self.data_wait_seconds / total, self.current_epoch, workers,
            )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = self._images(batch[0]), batch[1]
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        loss = self.train_loss(self.model(images), labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch})"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batch_end = time.perf_counter()
        self.train_seconds += self._batch_end - self._batch_start
        self.train_images += len(batch[0])
        world = self.trainer.world_size
        self.log("img_per_s", world * self.train_images / max(self.train_seconds, 1e-9), prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = self._images(batch[0]), batch[1]
        logits = self.model(images)
        self.metrics["top1"].update(logits, labels)
        self.metrics["top5"].update(logits, labels)
        self.log("val/loss", nn.functional.cross_entropy(logits, labels), sync_dist=True)
        if self.ema is not None:
            ema_logits = self.ema(images)
            self.metrics["top1_ema"].update(ema_logits, labels)
            self.metrics["top5_ema"].update(ema_logits, labels)

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.metrics.items():
            if metric.update_called:
                self.log(f"val/{name}", metric.compute() * 100, prog_bar=name == "top1")
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.recipe, self.lr)
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = total / max(1, self.trainer.max_epochs)
        schedule = build_schedule(optimizer, self.recipe, self.lr, total, steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
