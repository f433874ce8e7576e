"""recipe=paper equals ../shared/reference/recipe.md field by field; the recipe's pieces behave."""
from __future__ import annotations

import logging
import math
import re
import time
import traceback
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

import roadmap
from roadmap import ladder
from roadmap.classifier import Classifier, NonFiniteLossError
from roadmap.recipe import WarmupCosine, build_mixup, param_groups, scaled_lr



def compose_run(*overrides: str) -> DictConfig:
    return ladder.compose_run(overrides)


@pytest.fixture(scope="module")
def table(shared_dir: Path) -> dict[str, str]:
    rows = {}
    for line in (shared_dir / "reference" / "recipe.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("setting", "---"):
            rows[cells[0]] = cells[1]
    return rows


def numbers(text: str) -> list[float]:
    values = [float(x) for x in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?", text)]
    values += [float(a) / float(b) for a, b in re.findall(r"(\d+)/(\d+)", text)]
    return values


def contains(text: str, value: float) -> bool:
    return any(math.isclose(value, n, rel_tol=1e-6) for n in numbers(text))


def test_paper_recipe_equals_recipe_md(table: dict[str, str]) -> None:
    cfg = compose_run("experiment=paper_imagenet")
    r = cfg.recipe
    assert r.name == "paper" and cfg.data.name == "imagenet"
    assert "AdamW" in table["optimizer"] and r.optimizer.name == "adamw"
    assert all(contains(table["optimizer"], b) for b in r.optimizer.betas)
    assert contains(table["optimizer"], r.optimizer.eps)
    assert contains(table["base learning rate"], r.optimizer.base_lr)
    assert contains(table["base learning rate"], r.optimizer.base_batch)
    assert contains(table["weight decay"], r.optimizer.weight_decay) and "biases and 1-D" in table["weight decay"]
    assert contains(table["global batch"], r.global_batch)
    assert contains(table["epochs"], r.epochs)
    assert contains(table["schedule"], r.schedule.warmup_epochs)
    assert "from 0" in table["schedule"] and r.schedule.warmup_start_lr == 0
    assert contains(table["schedule"], r.schedule.min_lr) and "per iteration" in table["schedule"]
    assert r.augment.randaugment in table["RandAugment"]  # "rand-m9-mstd0.5-inc1"
    assert all(contains(table["RandAugment"], v) for v in (9, 0.5, 2))
    assert contains(table["color jitter"], r.augment.color_jitter)
    mix = table["mixup / cutmix"]
    assert contains(mix, r.augment.mixup) and contains(mix, r.augment.cutmix)
    assert contains(mix, r.augment.mixup_switch_prob) and "per batch" in mix and r.augment.mixup_mode == "batch"
    assert "every batch" in mix and r.augment.mixup_prob == 1.0
    erasing = table["random erasing"]
    assert contains(erasing, r.augment.random_erasing) and "per-pixel" in erasing
    assert r.augment.random_erasing_mode == "pixel" and r.augment.random_erasing_count == 1 and "one region" in erasing
    assert contains(table["label smoothing"], r.label_smoothing)
    assert contains(table["stochastic depth"], r.drop_path) and "every roadmap rung" in table["stochastic depth"]
    assert "off on the roadmap rungs" in table["layer scale init"] and r.layer_scale == 0
    assert contains(table["head init scale"], r.head_init_scale)
    assert table["gradient clipping"] == "none" and r.grad_clip is None
    assert contains(table["EMA"], r.ema_decay)
    crop = table["train crop"]
    assert contains(crop, cfg.data.image_size) and "bicubic" in crop and r.augment.interpolation == "bicubic"
    assert all(contains(crop, v) for v in (*r.augment.scale, *r.augment.ratio, r.augment.hflip))
    assert contains(table["eval"], round(cfg.data.image_size / r.augment.crop_pct))
    assert contains(table["eval"], r.augment.crop_pct) and contains(table["eval"], cfg.data.image_size)
    assert all(contains(table["normalization"], v) for v in (*r.augment.mean, *r.augment.std))
    # The run uses these values: the model gets the recipe's drop path and no layer scale.
    assert cfg.model.drop_path == r.drop_path and cfg.model.layer_scale == 0


def test_paper_experiment_is_the_official_launch() -> None:
    cfg = compose_run("experiment=paper_imagenet")
    t = cfg.trainer
    assert t.per_device_batch * t.devices * t.num_nodes == cfg.recipe.global_batch == 4096
    assert t.precision == "bf16-mixed" and t.strategy == "ddp" and cfg.data.image_size == 224


def test_learning_rate_scales_linearly() -> None:
    opt = {"base_lr": 4e-3, "base_batch": 4096}
    assert scaled_lr(opt, 4096) == pytest.approx(4e-3)
    assert scaled_lr(opt, 1024) == pytest.approx(1e-3)


def test_no_weight_decay_on_biases_and_1d_parameters() -> None:
    model = roadmap.build_model("separate_downsampling", layer_scale=1e-6, width_mult=0.25)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    gammas = [p for n, p in model.named_parameters() if n.endswith("gamma")]
    assert gammas and all(any(g is p for p in no_decay["params"]) for g in gammas)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("step", ["resnet50", "separate_downsampling"])
def test_normalized_weight_decay_goes_to_the_weights_a_norm_follows(step: str) -> None:
    from roadmap.recipe import build_optimizer

    model = roadmap.build_model(step, width_mult=0.25)
    model.train()
    stats = [b.clone() for b in model.buffers()]
    if step == "resnet50":  # BatchNorm after every conv: all of them; the head is not normalized
        expected = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    else:  # LayerNorm after the stem and each depthwise conv, not after the 1x1s or the downsampling convs
        expected = [model.stem.conv.weight] + [b.conv1.weight for s in model.stages for b in s.blocks]
        assert all(b.conv1.groups == b.conv1.in_channels for s in model.stages for b in s.blocks)
    recipe = compose_run("recipe=proxy", "recipe.optimizer.normalized_weight_decay=2.0").recipe
    recipe = OmegaConf.to_container(recipe)
    decay, normalized, no_decay = build_optimizer(model, recipe, 1e-3).param_groups
    assert [id(p) for p in normalized["params"]] == [id(p) for p in expected]
    assert (decay["weight_decay"], normalized["weight_decay"], no_decay["weight_decay"]) == (0.05, 2.0, 0.0)
    assert any(p is model.head.fc.weight for p in decay["params"]) and all(p.ndim > 1 for p in decay["params"])
    assert sum(len(g["params"]) for g in (decay, normalized, no_decay)) == len(list(model.parameters()))
    assert model.training and all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))  # the trace left no trace
    recipe["optimizer"].update(name="sgd", momentum=0.9)
    with pytest.raises(ValueError, match="recipe.optimizer.normalized_weight_decay=2.0 is an AdamW option"):
        build_optimizer(model, recipe, 1e-3)


def test_warmup_then_cosine_per_step() -> None:
    curve = WarmupCosine(lr=4e-3, total_steps=1000, warmup_steps=100, start_lr=0.0, min_lr=1e-6)
    lrs = [curve(s) * 4e-3 for s in range(1001)]
    assert lrs[0] == 0.0 and lrs[50] == pytest.approx(2e-3) and lrs[100] == pytest.approx(4e-3)
    assert lrs[1000] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))
    assert lrs[550] == pytest.approx(1e-6 + 0.5 * (4e-3 - 1e-6))


def test_mixup_is_timms_with_switch_and_smoothing() -> None:
    cfg = compose_run("recipe=paper")
    mixup = build_mixup(cfg.recipe, num_classes=10)
    assert mixup.mixup_alpha == 0.8 and mixup.cutmix_alpha == 1.0 and mixup.switch_prob == 0.5
    assert mixup.label_smoothing == 0.1 and mixup.mix_prob == 1.0 and mixup.mode == "batch"
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    _, targets = mixup(images, labels)
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))


def test_ema_is_tracked_outside_the_optimizer_and_nan_loss_stops() -> None:
    cfg = compose_run("recipe=paper")
    model = roadmap.build_model("gelu", num_classes=10, width_mult=0.25)
    module = Classifier(model, dict(cfg.recipe), num_classes=10, global_batch=64)
    assert module.ema is not None and not any(p.requires_grad for p in module.ema.parameters())
    with torch.no_grad():
        model.head.fc.weight.fill_(float("nan"))
    module.mixup = None
    module.train_loss = torch.nn.CrossEntropyLoss()
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        module.training_step((torch.randn(2, 3, 32, 32), torch.tensor([0, 1])), 0)


@pytest.mark.parametrize("recipe", ["paper", "proxy"])
def test_ema_updates_batchnorm_models(recipe: str) -> None:
    cfg = compose_run(f"recipe={recipe}")
    model = roadmap.build_model("resnet50", num_classes=10, width_mult=0.25)
    module = Classifier(model, dict(cfg.recipe), num_classes=10, global_batch=64)
    model(torch.randn(4, 3, 32, 32))  # moves BatchNorm statistics
    for _ in range(3):
        module.ema.update_parameters(model)
    assert int(module.ema.n_averaged) == 3
    ema_var = dict(module.ema.module.named_buffers())["stem.norm.running_var"]
    assert not torch.allclose(ema_var, torch.ones_like(ema_var))  # buffers follow the model


class SlowImages(torch.utils.data.Dataset):
    """A loader much slower than the model's step."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(0.25)
        return torch.randn(3, 16, 16), index % 2


def test_warns_once_when_the_step_waits_on_data(caplog: pytest.LogCaptureFixture) -> None:
    import lightning as L

    cfg = compose_run("recipe=proxy")
    # A model whose step is ~1 ms: with a real rung, a loaded CI machine made the step slower than
    # the loader, and there was rightly nothing to warn about.
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2))
    module = Classifier(tiny, dict(cfg.recipe), 2, 4)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with caplog.at_level(logging.WARNING, "roadmap.classifier"):
        trainer.fit(module, torch.utils.data.DataLoader(SlowImages(), batch_size=4))
    warnings = [r.getMessage() for r in caplog.records if "waited on data" in r.getMessage()]
    assert len(warnings) == 1 and "epoch 0" in warnings[0] and "data.num_workers" in warnings[0]
    assert module.data_wait_seconds >= 2 * 4 * 0.25  # the second epoch's two counted waits of 4 items


def test_the_classic_recipe_is_sgd_with_step_decay() -> None:
    from roadmap.recipe import StepDecay, build_optimizer, build_schedule

    recipe = compose_run("step=classic_recipe", "experiment=paper_imagenet").recipe
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, recipe, 0.1)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 1e-4 and len(optimizer.param_groups) == 1  # decay on every parameter
    schedule = build_schedule(optimizer, recipe, 0.1, total_steps=900, steps_per_epoch=10)
    assert isinstance(schedule.lr_lambdas[0], StepDecay)
    assert [schedule.lr_lambdas[0](s) for s in (0, 299, 300, 599, 600)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def _reference_ema(model: torch.nn.Module, decay: float, warmup: bool) -> torch.optim.swa_utils.AveragedModel:
    """The EMA as it was before roadmap.classifier.EMA: torch's AveragedModel, its update reading the count."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        current = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1 - current)
        else:
            for ema, param in zip(ema_params, params):
                ema.copy_(ema * current + param * (1 - current))

    return AveragedModel(model, multi_avg_fn=update if warmup else get_ema_multi_avg_fn(decay), use_buffers=True)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_torchs_averaged_model_bitwise_and_across_a_reload(warmup: bool) -> None:
    from roadmap.classifier import EMA

    torch.manual_seed(0)
    model = roadmap.build_model("resnet50", num_classes=10, width_mult=0.125)
    ema, reference = EMA(model, 0.9, warmup), _reference_ema(model, 0.9, warmup)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(6):
        model(torch.randn(4, 3, 32, 32)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update_parameters(model)
        reference.update_parameters(model)
        if step == 2:  # a resumed run: the update count comes back from the checkpointed buffer
            ema = EMA(model, 0.9, warmup)
            ema.load_state_dict(reference.state_dict())
    ours, theirs = ema.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and int(ours["n_averaged"]) == 6
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_training_steps_read_no_device_value(tmp_path: Path) -> None:
    """The per-step path (loss, logging, EMA, diagnostics, metrics callbacks) neither reads a tensor's value
    back to the host nor copies a host value to the device: on a GPU each would wait for the queued work.
    Counted on CPU as the ops that do so (_local_scalar_dense: item/bool/float; lift_fresh: torch.tensor of
    host data) plus tolist/numpy/cpu; the count must not grow with the number of steps."""
    import lightning as L
    from torch.utils._python_dispatch import TorchDispatchMode

    from roadmap.callbacks import EpochMetrics, PlainProgress
    from roadmap.diagnostics import TrainingDynamics

    reads = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default}

    class CountReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            # The optimizer's step counters are host tensors on a GPU too (capturable=False): not device reads.
            if func in reads and "torch/optim/" not in "".join(f.filename for f in traceback.extract_stack()[-6:]):
                CountReads.count += 1
            return func(*args, **(kwargs or {}))

    def fit(batches: int, monkeypatch: pytest.MonkeyPatch) -> int:
        torch.manual_seed(0)
        cfg = compose_run("recipe=proxy")
        module = Classifier(roadmap.build_model("separate_downsampling", num_classes=4, width_mult=0.125),
                            dict(cfg.recipe), 4, 8)
        data = torch.utils.data.TensorDataset(torch.randn(8 * batches, 3, 32, 32), torch.arange(8 * batches) % 4)
        trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False, log_every_n_steps=50,
                            gradient_clip_val=1.0, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False,
                            callbacks=[TrainingDynamics(), EpochMetrics(tmp_path, tmp_path), PlainProgress(50)])
        CountReads.count = 0
        with CountReads():
            trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
        return CountReads.count

    with pytest.MonkeyPatch.context() as monkeypatch:
        for method in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, method)

            def counted(self, *args, _original=original, **kwargs):  # noqa: ANN001, ANN202
                CountReads.count += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, method, counted)
        few, many = fit(3, monkeypatch), fit(9, monkeypatch)
    assert few == many, f"{many - few} host reads in 6 more steps"
