"""Training-dynamics diagnostics, one value per epoch in metrics.csv (`dyn/…` columns), measured
with a Lightning callback and torch hooks, without touching the model:

- `dyn/grad_norm`: global L2 norm of the gradients before clipping, mean over the epoch's
  optimizer steps.
- `dyn/stage{i}_rms` (i = 1..4): RMS of the residual stream at the output of stage i.
- `dyn/stage{i}_branch_ratio`: RMS of the last block's residual-branch output (after layer scale,
  before drop path and the add) over the RMS of that block's input.
- `dyn/update_ratio/<layer>`: ||W_after - W_before|| / ||W_before|| of a few layers' weights per
  optimizer step (`UPDATE_LAYERS`), mean over the epoch's steps.

Activation statistics are taken on every `every_n_batches`-th training batch (batch 0 of each epoch
included), gradient and update statistics on every optimizer step. Everything is accumulated on
the device and read back at epoch end. Nothing here draws random numbers or changes a tensor the
model uses, so a run computes the same weights with or without it.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from torch import nn

PREFIX = "dyn/"
log = logging.getLogger(__name__)


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square in float32 (bf16 activations included), as a 0-d tensor on x's device."""
    return torch.linalg.vector_norm(x.detach(), dtype=torch.float32) / math.sqrt(x.numel())


def is_roadmap_net(model: nn.Module) -> bool:
    """Whether the model has roadmap's builder layout (stem.conv, stages of blocks, head.fc)."""
    return isinstance(getattr(model, "stages", None), nn.Sequential) and hasattr(getattr(model, "head", None), "fc")


def update_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose update/weight ratio is recorded, keyed by module path: the stem conv, the
    first block's spatial (k×k) conv and last conv in stage 1, the last block's last conv in stage 4,
    the classifier; on a model of another factory, its first conv and its last Linear."""
    if not is_roadmap_net(model):
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:1]
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
        return {name: model.get_submodule(name) for name in convs + linears}
    # The spatial conv is where the rungs differ most (dense 3×3, depthwise, 7×7, moved up); under
    # BatchNorm its weight scale sets its effective learning rate.
    first = model.stages[0].blocks[0]
    spatial = next(f"stages.0.blocks.0.{n}" for n, m in first.named_children()
                   if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    last = len(model.stages[-1].blocks) - 1
    names = ["stem.conv", spatial, "stages.0.blocks.0.conv3", f"stages.{len(model.stages) - 1}.blocks.{last}.conv3",
             "head.fc"]
    return {name: model.get_submodule(name) for name in names}


class ActivationStats:
    """Forward hooks on a RoadmapNet's stages and each stage's last block; while `active`, every
    forward adds the stage-output RMS and the branch/input RMS ratio to device-side sums."""

    def __init__(self, model: nn.Module) -> None:
        self.active = False
        self.batches = 0
        stages = list(model.stages)
        self.names = [f"stage{i + 1}_rms" for i in range(len(stages))] + [
            f"stage{i + 1}_branch_ratio" for i in range(len(stages))]
        self._values: dict[int, torch.Tensor] = {}  # index in names -> this forward's value
        self._inputs: dict[int, torch.Tensor] = {}  # stage -> RMS of its last block's input
        self._sums: torch.Tensor | None = None
        self._handles = []
        for i, stage in enumerate(stages):
            last = stage.blocks[-1]
            self._handles += [
                stage.register_forward_hook(self._stage_hook(i)),
                last.register_forward_pre_hook(self._input_hook(i)),
                # drop_path's input is exactly the residual-branch output (layer scale applied).
                last.drop_path.register_forward_pre_hook(self._branch_hook(i, len(stages) + i)),
            ]

    def _stage_hook(self, i: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self.active:
                self._values[i] = rms(output)
        return hook

    def _input_hook(self, i: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple) -> None:
            if self.active:
                self._inputs[i] = rms(args[0])
        return hook

    def _branch_hook(self, i: int, index: int):  # noqa: ANN202
        # Measured at once: the block adds the shortcut into this tensor in place right after.
        def hook(module: nn.Module, args: tuple) -> None:
            if self.active:
                self._values[index] = rms(args[0]) / self._inputs[i]
        return hook

    def end_batch(self) -> None:
        """Add the values of the forward just run (if it was measured) to the sums; inactive after."""
        measured, self.active = self.active and len(self._values) == len(self.names), False
        if not measured:
            self._values.clear()
            return
        values = torch.stack([self._values[k] for k in range(len(self.names))])
        self._sums = values if self._sums is None else self._sums + values
        self.batches += 1
        self._values.clear()

    def means(self) -> dict[str, float]:
        """Mean of each statistic over the measured batches; NaN when none."""
        if self._sums is None:
            return {name: math.nan for name in self.names}
        return dict(zip(self.names, (self._sums / self.batches).tolist()))

    def reset(self) -> None:
        self._sums, self.batches = None, 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class TrainingDynamics(L.Callback):
    """Logs the `dyn/…` statistics once per training epoch (global rank 0 only; EpochMetrics
    writes them to metrics.csv). Register it before EpochMetrics: both act at epoch end, in order."""

    def __init__(self, every_n_batches: int = 10) -> None:
        self.every_n_batches = every_n_batches
        self.activations: ActivationStats | None = None
        self.layers: dict[str, nn.Module] = {}
        self._before: list[torch.Tensor] | None = None  # the layers' weights before this optimizer step
        self._grad_norm = torch.tensor(math.nan)
        self._sums: torch.Tensor | None = None  # grad norm, then one update ratio per layer
        self._steps = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = pl_module.model
        self.layers = update_layers(model)
        if not is_roadmap_net(model):
            log.info("trainer.diagnostics: the activation statistics (dyn/stage*) need roadmap's builder (stages "
                     "of blocks); off for this model; gradient and update ones stay")
        elif getattr(model, "_compiled_call_impl", None) is not None:
            # Hooks inside a compiled forward would be traced (and switching them recompiles).
            log.info("trainer.compile: activation diagnostics (dyn/stage*) are off; gradient and update ones stay")
        else:
            self.activations = ActivationStats(model)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.activations is not None:
            self.activations.remove()
            self.activations = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sums, self._steps, self._before = None, 0, None
        if self.activations is not None:
            self.activations.reset()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.activations is not None:
            self.activations.active = batch_idx % self.every_n_batches == 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        # Lightning calls this after the backward (and AMP unscaling), before clipping and the step.
        if not trainer.is_global_zero:
            return
        grads = [p.grad for p in pl_module.model.parameters() if p.grad is not None]
        self._grad_norm = torch.nn.utils.get_total_norm(grads).float() if grads else torch.tensor(math.nan)
        self._before = [m.weight.detach().clone() for m in self.layers.values()]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.activations is not None:
            self.activations.end_batch()
        if self._before is None:  # no optimizer step in this batch (gradient accumulation)
            return
        with torch.no_grad():
            ratios = [torch.linalg.vector_norm(m.weight - w) / torch.linalg.vector_norm(w)
                      for m, w in zip(self.layers.values(), self._before)]
            values = torch.stack([self._grad_norm.to(ratios[0].device), *ratios]).float()
        self._sums = values if self._sums is None else self._sums + values
        self._steps += 1
        self._before = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        names = ["grad_norm", *(f"update_ratio/{name}" for name in self.layers)]
        values = (self._sums / self._steps).tolist() if self._sums is not None else [math.nan] * len(names)
        stats = dict(zip(names, values))
        if self.activations is not None:
            stats.update(self.activations.means())
        for name, value in stats.items():
            pl_module.log(PREFIX + name, value, on_step=False, on_epoch=True, rank_zero_only=True)
