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


def scaled_lr(optimizer_cfg: Mapping[str, Any], global_batch: int) -> float:
    """Linear scaling: base_lr at base_batch."""
    return float(optimizer_cfg["base_lr"]) * global_batch / float(optimizer_cfg["base_batch"])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: none on biases and 1-D parameters (norms, layer scale)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("warmup_cosine", "step")


def build_optimizer(model: nn.Module, recipe: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
    """AdamW without decay on 1-D parameters (the modern recipe), or SGD with momentum and weight
    decay on every parameter (torchvision's classic ResNet recipe)."""
    opt = recipe["optimizer"]
    if opt["name"] not in OPTIMIZERS:
        raise ValueError(f"recipe.optimizer.name={opt['name']!r} is not supported; valid: {list(OPTIMIZERS)}")
    if opt["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(opt["momentum"]),
                               weight_decay=float(opt["weight_decay"]))
    groups = param_groups(model, float(opt["weight_decay"]))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt["betas"]), eps=float(opt["eps"]))


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
    """recipe.schedule.name: `warmup_cosine` (the default; recipes recorded before the key existed
    have it) or `step` (milestones in epochs, gamma)."""
    sched = recipe["schedule"]
    name = sched.get("name", "warmup_cosine")
    if name not in SCHEDULES:
        raise ValueError(f"recipe.schedule.name={name!r} is not supported; valid: {list(SCHEDULES)}")
    if name == "step":
        decay = StepDecay(tuple(float(m) for m in sched["milestones"]), float(sched["gamma"]), steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    warmup = min(total_steps, round(float(sched["warmup_epochs"]) * steps_per_epoch))
    curve = WarmupCosine(lr, total_steps, warmup, float(sched["warmup_start_lr"]), float(sched["min_lr"]))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, curve)


def build_mixup(recipe: Mapping[str, Any], num_classes: int) -> Mixup | None:
    """timm's MixUp/CutMix (per-batch switch, label smoothing in the soft targets), or None."""
    aug = recipe["augment"]
    if float(aug["mixup"]) <= 0 and float(aug["cutmix"]) <= 0:
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
