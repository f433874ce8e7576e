"""The LightningModule: one rung trained with the recipe; top-1/top-5 of the raw model and,
separately, of its EMA (the paper's rung numbers are without EMA)."""
from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype
from torchmetrics.classification import MulticlassAccuracy

from roadmap.recipe import (
    build_mixup,
    build_train_loss,
    optimizer_and_schedule,
    scaled_lr,
)

log = logging.getLogger("roadmap.classifier")

# Warn (once per fit) when the train step waited on the loader for more than this share of an epoch.
DATA_WAIT_WARNING = 0.2


def ema_decay(decay: float, warmup: bool, updates: int) -> float:
    """The EMA decay at the update after `updates` earlier ones; with `warmup` it ramps up as
    min(decay, (1+n)/(10+n)) (timm's / TF's EMA warmup), so a short run's EMA is not stuck near its init."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


class EMA(AveragedModel):
    """AveragedModel's EMA of the parameters and buffers (BatchNorm statistics follow the averaged
    weights), updated without reading a device value: AveragedModel.update_parameters tests its
    device-side update count twice per step (a host sync on a GPU). The count is kept on the host
    too, read from `n_averaged` (the checkpointed buffer) once after each load."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        super().__init__(model, use_buffers=True)
        self.decay, self.warmup = decay, warmup
        self._updates: int | None = 0
        self.requires_grad_(False)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._updates = None

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._updates is None:
            self._updates = int(self.n_averaged)
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self._updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            decay = ema_decay(self.decay, self.warmup, self._updates)
            for (_, dtype), ([ema, now], _) in _group_tensors_by_device_and_dtype([averaged, current]).items():
                if dtype.is_floating_point or dtype.is_complex:
                    torch._foreach_lerp_(ema, now, 1 - decay)
                else:  # integer buffers (BatchNorm's num_batches_tracked), as torch's own EMA does
                    for e, n in zip(ema, now):
                        e.copy_(e * decay + n * (1 - decay))
        self.n_averaged += 1
        self._updates += 1


class FiniteLossCheck:
    """The first non-finite training loss and its global step, kept on the loss's device: recording
    needs no host sync, `check` reads them back (one sync) and raises."""

    def __init__(self) -> None:
        self.step: torch.Tensor | None = None  # -1: every loss so far was finite
        self.value: torch.Tensor | None = None

    def record(self, loss: torch.Tensor, global_step: int) -> None:
        loss = loss.detach().float()
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.value = torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(first, global_step, self.step)
        self.value = torch.where(first, loss, self.value)

    def watch(self, loss: torch.Tensor, module: L.LightningModule, batch_idx: int) -> None:
        """A training step's loss: recorded at once, checked at the module's log steps and at its
        epoch's last batch (every step without a trainer)."""
        self.record(loss, module.global_step)
        trainer = module._trainer
        every = trainer.log_every_n_steps if trainer is not None else 1
        if trainer is None or (batch_idx + 1) % every == 0 or trainer.is_last_batch:
            self.check(module.current_epoch, every)

    def check(self, epoch: int, every: int) -> None:
        if self.step is None or (step := int(self.step)) < 0:
            return
        raise NonFiniteLossError(f"training loss is {self.value.item()} at global step {step} (epoch {epoch}; "
                                 f"checked every {every} batches and at the epoch's end)")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class Classifier(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        recipe: dict[str, Any],
        num_classes: int,
        global_batch: int | None = None,
        channels_last: bool = False,
        cuda_graphs: bool = False,
        lr: float | None = None,
    ) -> None:
        """`lr`: the run's learning rate (`RunPlan.lr`); without it, the recipe's scaled to `global_batch`."""
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.lr = lr if lr is not None else scaled_lr(recipe["optimizer"], global_batch)
        self.mixup = build_mixup(recipe, num_classes)
        self.train_loss = build_train_loss(recipe, mixing=self.mixup is not None)
        self.ema: EMA | None = None
        if recipe.get("ema_decay"):
            self.ema = EMA(model, float(recipe["ema_decay"]), bool(recipe.get("ema_warmup")))
        self.finite_loss = FiniteLossCheck()
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
        if self.cuda_graphs:  # each step a new CUDA-graph iteration (train, eval and EMA forwards interleave)
            torch.compiler.cudagraph_mark_step_begin()
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
        # Nothing here reads a device value (each read waits for the GPU): the loss is checked at log
        # steps and each epoch's last batch, and logged without prog_bar (Lightning converts progress-bar
        # values to numbers after every batch).
        self.finite_loss.watch(loss, self, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batch_end = time.perf_counter()
        self.train_seconds += self._batch_end - self._batch_start
        self.train_images += len(batch[0])
        # Host values, logged (copied to the device) only when the loggers write and at the epoch's end.
        if self.trainer._logger_connector.should_update_logs or self.trainer.is_last_batch:
            world = self.trainer.world_size
            self.log("img_per_s", world * self.train_images / max(self.train_seconds, 1e-9))
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
        return optimizer_and_schedule(self.trainer, self.model, self.recipe, self.lr)
