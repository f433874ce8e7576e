"""The training recipe's pieces: the optimizer (AdamW, or the classic recipe's SGD), the per-step
LR schedule (warmup + cosine, or step decay), MixUp/CutMix."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from roadmap import schema


def scaled_lr(optimizer_cfg: Mapping[str, Any], global_batch: int) -> float:
    """Linear scaling: base_lr at base_batch."""
    return float(optimizer_cfg["base_lr"]) * global_batch / float(optimizer_cfg["base_batch"])


def mixing(recipe: Mapping[str, Any]) -> bool:
    """MixUp or CutMix is on (either alpha > 0)."""
    return float(recipe["augment"]["mixup"]) > 0 or float(recipe["augment"]["cutmix"]) > 0


NORMALIZATIONS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def normalized_weights(model: nn.Module, image_size: int = 64) -> list[nn.Parameter]:
    """The conv and Linear weights whose output goes straight into a normalization layer, found by
    one forward pass (eval mode, hooks, a blank image batch). The normalization makes its input's
    scale irrelevant, so the decay of such a weight sets its effective learning rate."""
    produced: dict[int, tuple[nn.Module, torch.Tensor, int]] = {}
    feeding: set[nn.Module] = set()

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        # The tensor is kept so that its id stays its own; its version tells an in-place change
        # (a residual `y += shortcut` on the conv's output) from the conv's own output.
        produced[id(output)] = (module, output, output._version)

    def check(module: nn.Module, args: tuple) -> None:
        source = produced.get(id(args[0]))
        if source is not None and source[2] == args[0]._version:
            feeding.add(source[0])

    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    hooks = [m.register_forward_hook(record) for m in layers]
    hooks += [m.register_forward_pre_hook(check) for m in model.modules() if isinstance(m, NORMALIZATIONS)]
    modes = {m: m.training for m in model.modules()}
    weight = next(model.parameters())
    try:
        model.eval()
        # .forward, not __call__: a model compiled in place (nn.Module.compile) runs eagerly here.
        model.forward(torch.zeros(2, 3, image_size, image_size, device=weight.device, dtype=weight.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    return [m.weight for m in layers if m in feeding]


def param_groups(
    model: nn.Module, weight_decay: float, normalized_weight_decay: float | None = None
) -> list[dict[str, Any]]:
    """Weight decay on weights only: none on biases and 1-D parameters (norms, layer scale). With
    `normalized_weight_decay`, the weights a normalization follows (`normalized_weights`) get that
    decay instead, in a group of their own."""
    normalized = {id(p) for p in normalized_weights(model)} if normalized_weight_decay is not None else set()
    decay, decay_normalized, no_decay = [], [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay_normalized if id(param) in normalized else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if normalized_weight_decay is not None:
        groups.insert(1, {"params": decay_normalized, "weight_decay": normalized_weight_decay})
    return groups


def build_optimizer(model: nn.Module, recipe: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
    """AdamW without decay on 1-D parameters (the modern recipe), or SGD with momentum and weight
    decay on every parameter (torchvision's classic ResNet recipe)."""
    opt = recipe["optimizer"]
    schema.check(opt, "recipe.optimizer")
    normalized = schema.value(opt, "recipe.optimizer.normalized_weight_decay")
    if opt["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(schema.value(opt, "recipe.optimizer.momentum")),
                               weight_decay=float(opt["weight_decay"]))
    layer_decay = schema.value(opt, "recipe.optimizer.layer_decay")
    if layer_decay is not None:
        groups = layer_decay_groups(model, float(opt["weight_decay"]), float(layer_decay), lr)
    else:
        groups = param_groups(model, float(opt["weight_decay"]), None if normalized is None else float(normalized))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt["betas"]), eps=float(opt["eps"]))


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float, lr: float) -> list[dict[str, Any]]:
    """timm's layer-decay groups (the model's `group_matcher`: for roadmap's builder the official
    ConvNeXt grouping), each at lr × its `lr_scale`; no decay on 1-D parameters, as `param_groups`.
    The schedule multiplies every group's lr alike, so each keeps its scale throughout, as the
    official code's per-step `lr × lr_scale`."""
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay, layer_decay=layer_decay)
    return [{**group, "lr": lr * group["lr_scale"]} for group in groups]


@dataclass
class WarmupCosine:
    """LR multiplier per optimizer step: linear warmup from `start_lr`, then cosine to `min_lr`
    (the official code's per-iteration schedule). A class, not a lambda, so LambdaLR saves it."""

    lr: float
    total_steps: int
    warmup_steps: int
    start_lr: float = 0.0
    min_lr: float = 1e-6

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            value = self.start_lr + (self.lr - self.start_lr) * step / self.warmup_steps
        else:
            decay_steps = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / decay_steps)
            value = self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))
        return value / self.lr


@dataclass
class WarmupPoly:
    """LR multiplier per optimizer step: mmsegmentation's poly, (lr - min_lr)(1 - step/total)^power + min_lr,
    under mmcv's linear warmup, which scales that lr by 1 - (1 - step/warmup)(1 - start_lr/lr)."""

    lr: float
    total_steps: int
    warmup_steps: int
    start_lr: float = 0.0
    min_lr: float = 0.0
    power: float = 1.0

    def __call__(self, step: int) -> float:
        progress = min(1.0, step / max(1, self.total_steps))
        value = (self.lr - self.min_lr) * (1 - progress) ** self.power + self.min_lr
        if step < self.warmup_steps:
            value *= 1 - (1 - step / self.warmup_steps) * (1 - self.start_lr / self.lr)
        return value / self.lr


@dataclass
class StepDecay:
    """LR multiplier per optimizer step: x `gamma` at each of `milestones` (in epochs)."""

    milestones: tuple[float, ...]
    gamma: float
    steps_per_epoch: float

    def __call__(self, step: int) -> float:
        epoch = step / self.steps_per_epoch
        return self.gamma ** sum(epoch >= m for m in self.milestones)


def build_schedule(
    optimizer: torch.optim.Optimizer, recipe: Mapping[str, Any], lr: float, total_steps: int, steps_per_epoch: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """recipe.schedule.name: `warmup_cosine`, `warmup_poly` or `step` (milestones in epochs, gamma)."""
    sched = recipe["schedule"]
    schema.check(sched, "recipe.schedule")
    name = schema.value(sched, "recipe.schedule.name")
    if name == "step":
        milestones = tuple(float(m) for m in schema.value(sched, "recipe.schedule.milestones"))
        decay = StepDecay(milestones, float(schema.value(sched, "recipe.schedule.gamma")), steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    warmup_steps = schema.value(sched, "recipe.schedule.warmup_steps")
    if warmup_steps is None:
        warmup_steps = round(float(sched["warmup_epochs"]) * steps_per_epoch)
    warmup = min(total_steps, int(warmup_steps))
    if name == "warmup_poly":
        curve = WarmupPoly(lr, total_steps, warmup, float(sched["warmup_start_lr"]), float(sched["min_lr"]),
                           float(schema.value(sched, "recipe.schedule.power")))
    else:
        curve = WarmupCosine(lr, total_steps, warmup, float(sched["warmup_start_lr"]), float(sched["min_lr"]))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, curve)


def optimizer_and_schedule(trainer: Any, model: nn.Module, recipe: Mapping[str, Any], lr: float) -> dict[str, Any]:
    """A LightningModule's `configure_optimizers`: the recipe's optimizer and its per-step schedule over
    the trainer's optimizer steps (`recipe.max_steps`, or its epochs)."""
    optimizer = build_optimizer(model, recipe, lr)
    total = int(trainer.estimated_stepping_batches)
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        steps_per_epoch = total / trainer.max_epochs
    else:  # trained by max_steps: an epoch is the loader's length
        steps_per_epoch = max(1.0, trainer.num_training_batches / trainer.accumulate_grad_batches)
    schedule = build_schedule(optimizer, recipe, lr, total, steps_per_epoch)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def build_mixup(recipe: Mapping[str, Any], num_classes: int) -> Mixup | None:
    """timm's MixUp/CutMix (per-batch switch, label smoothing in the soft targets), or None."""
    aug = recipe["augment"]
    if not mixing(recipe):
        return None
    return Mixup(
        mixup_alpha=float(aug["mixup"]),
        cutmix_alpha=float(aug["cutmix"]),
        prob=float(aug["mixup_prob"]),
        switch_prob=float(aug["mixup_switch_prob"]),
        mode=aug["mixup_mode"],
        label_smoothing=float(recipe["label_smoothing"]),
        num_classes=num_classes,
    )


def build_train_loss(recipe: Mapping[str, Any], mixing: bool) -> nn.Module:
    if mixing:
        return SoftTargetCrossEntropy()  # smoothing is already in Mixup's targets
    return nn.CrossEntropyLoss(label_smoothing=float(recipe["label_smoothing"]))
